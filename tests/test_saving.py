"""Saving never removes what it did not write; swaps are atomic for readers and writers.

Every save path goes through unimm.io.atomic_directory: the API's save_pretrained,
`unimm convert` / `unimm export`, the trainers' exports. These tests put other
people's files where a model is written and check they survive.
"""
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

import unimm
from unimm import folders as uio
from unimm.cli import main as cli

NOTES = {"notes.txt": "mine", "other-model/config.json": "{}", "other-model/model.safetensors": "x"}


def _plant(folder: Path, files=NOTES) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def _intact(folder: Path, files=NOTES) -> bool:
    return all((folder / rel).read_text() == text for rel, text in files.items())


def test_a_folder_holding_other_files_is_refused_naming_them(tiny_pipe, tmp_path):
    _plant(tmp_path / "models")
    with pytest.raises(ValueError, match=r"already holds files this save did not write: notes.txt, other-model/; "
                                         r".*overwrite=True"):
        tiny_pipe.save_pretrained(tmp_path / "models")
    assert _intact(tmp_path / "models")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["notes.txt", "other-model"]
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no temporary left


def test_overwrite_replaces_only_the_models_own_files(tiny_pipe, saved_tiny, tmp_path):
    target = tmp_path / "models"
    _plant(target, {**NOTES, "config.json": "a user's config"})
    tiny_pipe.save_pretrained(target, overwrite=True)
    assert _intact(target)  # other files and folders untouched
    again = unimm.load(str(target))  # config.json is the model's own name: replaced
    assert again.generate("a red circle", temperature=0, seed=0) == tiny_pipe.generate("a red circle", temperature=0, seed=0)
    # Saving again (bf16, then sharded) replaces the earlier save's files, still keeping the rest.
    tiny_pipe.save_pretrained(target, overwrite=True, max_shard_size="300KB")
    assert not (target / "model.safetensors").exists()  # the earlier save's single file is gone
    assert sorted(p.name for p in target.glob("model-*.safetensors"))
    assert _intact(target)
    assert unimm.load(str(target)).generate("a red circle", temperature=0, seed=0) == tiny_pipe.generate("a red circle", temperature=0, seed=0)


def test_saving_again_over_an_earlier_save_needs_no_overwrite(tiny_pipe, tmp_path):
    target = tmp_path / "m"
    tiny_pipe.save_pretrained(target, max_shard_size="300KB")
    tiny_pipe.save_pretrained(target)  # only the earlier save's own files there: replaced whole
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [".unimm-manifest.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    # An empty folder is fine too.
    (tmp_path / "empty").mkdir()
    tiny_pipe.save_pretrained(tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_a_file_added_to_a_saved_model_is_kept(tiny_pipe, tmp_path):
    target = tmp_path / "m"
    tiny_pipe.save_pretrained(target)
    (target / "README.md").write_text("my notes about this model")
    with pytest.raises(ValueError, match=r"did not write: README.md"):
        tiny_pipe.save_pretrained(target)
    tiny_pipe.save_pretrained(target, overwrite=True)
    assert (target / "README.md").read_text() == "my notes about this model"


def test_a_regular_file_is_never_turned_into_a_model(tiny_pipe, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"precious")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"cannot save to .*model.bin: it is a file, not a folder"):
            tiny_pipe.save_pretrained(target, overwrite=overwrite)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    with pytest.raises(ValueError, match=r"model.bin is a file, not a folder"):
        tiny_pipe.save_pretrained(target / "sub")


def test_files_take_the_users_umask(tiny_pipe, tmp_path):
    old = os.umask(0o027)
    try:
        tiny_pipe.save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o750


def test_a_truncated_weights_file_is_named_on_load(saved_tiny, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(saved_tiny, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match=r"model.safetensors in .*m is damaged: 1,000 bytes, .* were written \(truncated\)"):
        unimm.load(str(copy))


def test_component_saves_follow_the_same_rules(tmp_path):
    from unimm.tokenizers import build_image_tokenizer

    vq = build_image_tokenizer({"type": "vq", "image_size": 16, "block_out_channels": [8, 8], "layers_per_block": 1,
                                "norm_num_groups": 4, "latent_channels": 4})
    _plant(tmp_path / "vq")
    with pytest.raises(ValueError, match="did not write: notes.txt"):
        vq.save_pretrained(tmp_path / "vq")
    vq.save_pretrained(tmp_path / "vq", overwrite=True)
    assert _intact(tmp_path / "vq") and (tmp_path / "vq" / "model.safetensors").is_file()


def test_a_save_killed_midway_leaves_no_temporary_behind_for_long(tiny_pipe, tmp_path):
    # A process killed inside a save leaves .NAME.tmp-HOST-PID-*; the next save of NAME on that host
    # removes it once PID is gone. A live process's, or another host's, is left alone.
    host = uio._HOST
    stale = tmp_path / f".m.tmp-{host}-999999999-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".m.tmp-{host}-{os.getppid()}-abc"
    alive.mkdir()
    elsewhere = tmp_path / ".m.tmp-000000-999999999-abc"
    elsewhere.mkdir()
    fresh = tmp_path / f".m.tmp-{host}-999999998-abc"  # a dead-looking PID, but touched just now
    fresh.mkdir()
    old = __import__("time").time() - 3600
    for p in (stale, alive, elsewhere):
        os.utime(p, (old, old))
    tiny_pipe.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", alive.name, elsewhere.name, fresh.name])


def test_race_reader_and_second_writer_held_inside_a_save(tiny_pipe, tmp_path, monkeypatch):
    """Writer A is held inside its swap; a reader and writer B arrive meanwhile.

    The reader must get a whole model (A's or the one before), never "not a model
    directory"; B must wait and then win; nothing temporary may remain.
    """
    target = tmp_path / "m"
    tiny_pipe.save_pretrained(target)
    base = unimm.load(str(target)).model.state_dict()

    inside, release = threading.Event(), threading.Event()
    real = uio.exchange_paths

    def held(a, b):
        if threading.current_thread().name == "A":
            inside.set()
            assert release.wait(30)
        return real(a, b)

    monkeypatch.setattr(uio, "exchange_paths", held)
    torch.manual_seed(1)
    model_a = unimm.load("tiny")
    torch.manual_seed(2)
    model_b = unimm.load("tiny")
    errors, loaded = [], []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    a = threading.Thread(target=run, args=(model_a.save_pretrained, target), name="A")
    a.start()
    assert inside.wait(30)
    reader = threading.Thread(target=run, args=(lambda: loaded.append(unimm.load(str(target)).model.state_dict()),))
    b = threading.Thread(target=run, args=(model_b.save_pretrained, target), name="B")
    reader.start()
    b.start()
    reader.join(2)
    b.join(2)
    assert reader.is_alive() and b.is_alive()  # both wait for A's swap
    release.set()
    for t in (a, reader, b):
        t.join(60)
    assert not errors, errors
    sd_a, sd_b = model_a.model.state_dict(), model_b.model.state_dict()
    got = loaded[0]
    assert any(all(torch.equal(got[k], ref[k]) for k in got) for ref in (base, sd_a, sd_b))
    final = unimm.load(str(target)).model.state_dict()
    assert any(all(torch.equal(final[k], ref[k]) for k in final) for ref in (sd_a, sd_b))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no .m.tmp-* or .m.old-* left


def test_cli_convert_and_export_refuse_their_source_and_keep_other_files(saved_tiny, tmp_path, capsys):
    from janus_helpers import CONFIGS, build_janus

    src = tmp_path / "janus"
    build_janus(src, **CONFIGS["mha-tied-32px"])
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert cli(["convert", "janus", str(src), str(src)]) == 2
    assert "it is the source folder" in capsys.readouterr().err
    assert cli(["convert", "janus", str(src), str(src), "--overwrite"]) == 2
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the checkpoint is as it was

    out = tmp_path / "converted"
    _plant(out)
    assert cli(["convert", "janus", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds files this save did not write: notes.txt, other-model/" in err and "--overwrite" in err
    assert cli(["convert", "janus", str(src), str(out), "--overwrite"]) == 0
    assert _intact(out) and (out / "model.safetensors").is_file()

    exported = tmp_path / "exported"
    _plant(exported)
    assert cli(["export", "janus", str(out), str(exported)]) == 2
    assert cli(["export", "janus", str(out), str(out)]) == 2
    assert "it is the source folder" in capsys.readouterr().err
    assert cli(["export", "janus", str(out), str(exported), "--overwrite"]) == 0
    assert _intact(exported) and (exported / "processor_config.json").is_file()


@pytest.mark.parametrize("argv, folder", [
    (["train", "configs/train/tiny-stage1.yaml", "steps=1"], "final"),
    (["train-tokenizer", "configs/tokenizers/vq-shapes.yaml", "steps=1"], "tokenizer"),
    (["train-siglip", "configs/recipes/siglip-shapes.yaml", "steps=1"], "model"),
])
def test_trainers_refuse_an_export_folder_holding_other_files_before_training(argv, folder, tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    _plant(out / folder)
    argv = [argv[0], str(root / argv[1]), *argv[2:], f"output_dir={out}"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"{out / folder} already holds files this save did not write: notes.txt, other-model/" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [folder]  # refused before any work: no logs, no checkpoints
    assert _intact(out / folder)


def test_saving_into_the_working_directory_or_through_a_link(tiny_pipe, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    tiny_pipe.save_pretrained(".")
    tiny_pipe.save_pretrained(".")  # again: the files are replaced in place, the folder stays this process's cwd
    assert Path.cwd() == here and (here / "model.safetensors").is_file()
    assert unimm.load(".").generate("a red circle", temperature=0, seed=0) == tiny_pipe.generate("a red circle", temperature=0, seed=0)
    link = tmp_path / "link"
    link.symlink_to(here)
    tiny_pipe.save_pretrained(link)
    assert link.is_symlink() and (here / "model.safetensors").is_file()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a link to .*nowhere, not a folder"):
        tiny_pipe.save_pretrained(dangling)


def test_a_manifest_naming_files_outside_its_folder_is_not_trusted(tiny_pipe, tmp_path):
    import json

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "downloaded"
    target.mkdir()
    (target / "README.md").write_text("x")
    (target / ".unimm-manifest.json").write_text(json.dumps({"format": "unimm-manifest", "version": 1, "kind": "model",
        "files": {"../victim.txt": {"size": 7, "sha256": "x"}, str(victim): {"size": 7, "sha256": "x"}}}))
    with pytest.raises(ValueError, match="already holds files this save did not write: .unimm-manifest.json, README.md"):
        tiny_pipe.save_pretrained(target)
    tiny_pipe.save_pretrained(target, overwrite=True)
    assert victim.read_text() == "keep me" and (target / "README.md").read_text() == "x"
    with pytest.raises(ValueError, match=r"names files outside the folder: \.\./victim.txt"):
        uio.read_manifest(_planted(tmp_path))


def _planted(tmp_path):
    import json

    d = tmp_path / "planted"
    d.mkdir()
    (d / ".unimm-manifest.json").write_text(json.dumps({"format": "unimm-manifest", "version": 1, "kind": "model",
                                                       "files": {"../victim.txt": {"size": 7, "sha256": "x"}}}))
    return d


def test_overwrite_into_an_old_style_folder_leaves_no_stale_weights_to_load(tiny_pipe, tmp_path):
    target = tmp_path / "m"
    torch.manual_seed(5)
    unimm.load("tiny", seed=5).save_pretrained(target)  # one model.safetensors
    (target / ".unimm-manifest.json").unlink()  # as an older unimm (or a copy by hand) left it
    tiny_pipe.save_pretrained(target, overwrite=True, max_shard_size="300KB")  # shards now
    assert not (target / "model.safetensors").exists()
    got = unimm.load(str(target)).model.state_dict()
    ref = tiny_pipe.model.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_a_merge_cut_short_is_named_on_load_and_finished_by_the_next_save(tiny_pipe, tmp_path, monkeypatch):
    target = tmp_path / "m"
    _plant(target)
    tiny_pipe.save_pretrained(target, overwrite=True)
    real, calls = os.replace, {"n": 0}

    def crash(a, b, *k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies in the middle of moving files in
        return real(a, b, *k)

    monkeypatch.setattr(uio.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        unimm.load("tiny", seed=3).save_pretrained(target, overwrite=True, max_shard_size="300KB")
    monkeypatch.setattr(uio.os, "replace", real)
    with pytest.raises(ValueError, match=r"is half written: a save into it was cut short"):
        unimm.load(str(target))
    with pytest.raises(ValueError, match=r"did not write: notes.txt, other-model/; "):  # the half-moved files
        tiny_pipe.save_pretrained(target)  # are the model's own, not listed as other people's
    tiny_pipe.save_pretrained(target, overwrite=True)
    assert _intact(target) and not (target / ".unimm-merge.json").exists()
    assert not list(target.glob("model-*.safetensors"))  # the cut-short save's shards are gone
    got, ref = unimm.load(str(target)).model.state_dict(), tiny_pipe.model.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_a_folder_where_the_model_writes_a_file_is_refused_before_anything_moves(tiny_pipe, tmp_path):
    target = tmp_path / "m"
    _plant(target)
    (target / "tokenizer_config.json").mkdir()
    with pytest.raises(ValueError, match=r"tokenizer_config.json would replace a folder there"):
        tiny_pipe.save_pretrained(target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt", "other-model", "tokenizer_config.json"]


def test_empty_folders_and_links_to_folders_are_other_peoples(tiny_pipe, tmp_path):
    target = tmp_path / "m"
    tiny_pipe.save_pretrained(target)
    (target / "my-empty").mkdir()
    (target / "links").mkdir()
    (target / "links" / "data").symlink_to(tmp_path)
    with pytest.raises(ValueError, match=r"did not write: links/, my-empty/"):
        tiny_pipe.save_pretrained(target)
    tiny_pipe.save_pretrained(target, overwrite=True)
    assert (target / "my-empty").is_dir() and (target / "links" / "data").is_symlink()


def test_paths_that_are_no_place_for_a_save(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="cannot save to an empty path"):
        tiny_pipe.save_pretrained("")
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(ValueError, match=r"it is inside the source folder .*src"):
        uio.check_destination(src / "converted", sources=[src])
    with pytest.raises(ValueError, match=r"it is the source folder"):
        uio.check_destination(tmp_path / "x" / ".." / "src", sources=[src])


def test_a_reader_through_a_link_locks_the_folder_writers_lock(tmp_path, monkeypatch):
    real = tmp_path / "real"
    (real / "m").mkdir(parents=True)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "m").symlink_to(real / "m")
    locked = []
    monkeypatch.setattr(uio, "_locked", lambda folder, exclusive: (locked.append(folder), __import__("contextlib").nullcontext())[1])
    with uio.reading(tmp_path / "links" / "m"):
        pass
    assert locked == [real]  # the parent the writer of real/m locks


def test_a_full_disk_during_a_save_is_one_line_and_keeps_what_was_there(tiny_pipe, tmp_path, capsys):
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (mnt / "notes.txt").write_text("mine")
        with pytest.raises(RuntimeError, match=r"could not save to .*m: .*; .*m is as it was"):
            tiny_pipe.save_pretrained(mnt / "m")
        assert sorted(p.name for p in mnt.iterdir()) == ["notes.txt"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)

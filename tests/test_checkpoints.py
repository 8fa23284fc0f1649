"""Training checkpoints: nothing in them runs as code, damage is named and skipped, a full disk loses nothing."""
import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import unimm
from unimm.folders import write_manifest
from unimm.train import main as train_cli
from unimm.training.checkpoints import checkpoint_problem, latest_checkpoint, list_checkpoints
from unimm.training.config import load_train_config
from unimm.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
STAGE1 = str(ROOT / "configs" / "train" / "tiny-stage1.yaml")
# EMA on: its state is part of every checkpoint and must survive the round trip.
RUN = ["steps=4", "batch_size=4", "save_every=2", "log_every=1", "ema_decay=0.9"]


def _cfg(out: Path):
    return load_train_config(STAGE1, RUN + [f"output_dir={out}"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run (checkpoints at steps 2 and 4) and the weights it exported."""
    root = tmp_path_factory.mktemp("ckpt")
    final = train(_cfg(root / "run"), progress=False)
    return root / "run", unimm.load(str(final)).model.state_dict()


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Payload:
    """Unpickling this (without weights_only) runs code: it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_checkpoints_hold_no_trainer_pickles_and_list_every_file(runs):
    run, _ = runs
    ckpt = latest_checkpoint(run)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [".unimm-manifest.json", "ema.safetensors", "model.safetensors", "optimizer.bin",
                     "random_states_0.pkl", "scheduler.bin", "trainer_state.json"]
    manifest = json.loads((ckpt / ".unimm-manifest.json").read_text())
    assert sorted(manifest["files"]) == names[1:]
    assert checkpoint_problem(ckpt, needs_ema=True) is None


def test_a_planted_pickle_payload_in_any_checkpoint_file_never_runs(runs, tmp_path):
    run, _ = runs
    names = sorted(p.name for p in latest_checkpoint(run).iterdir())
    marker = tmp_path / "payload-ran"
    for i, name in enumerate(names):
        out = tmp_path / f"case{i}"
        shutil.copytree(run, out)
        ckpt = out / "checkpoints" / "step-0000004"
        torch.save(Payload(marker), ckpt / name)
        if name != ".unimm-manifest.json":
            write_manifest(ckpt, "checkpoint")  # forged to match: the loaders themselves must refuse it
        cfg = load_train_config(STAGE1, RUN + [f"output_dir={out}"])
        train(cfg, resume=True, progress=False, stop_at=4)
        assert not marker.exists(), f"a payload in {name} ran"
    # Every file at once, manifest untouched: nothing runs, and the run goes back to step 2.
    out = _copy(run, tmp_path / "all")
    for name in names:
        torch.save(Payload(marker), out / "checkpoints" / "step-0000004" / name)
    train(load_train_config(STAGE1, RUN + [f"output_dir={out}"]), resume=True, progress=False, stop_at=4)
    assert not marker.exists()
    # The payload is live: loading it the unsafe way runs it.
    torch.save(Payload(marker), tmp_path / "probe.bin")
    torch.load(tmp_path / "probe.bin", weights_only=False)
    assert marker.read_text() == "ran"


def _truncate(path: Path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


DAMAGE = {
    "model.safetensors": (_truncate, r"model.safetensors is truncated"),
    "optimizer.bin": (_truncate, r"optimizer.bin is truncated"),
    "scheduler.bin": (_truncate, r"scheduler.bin is truncated"),
    "ema.safetensors": (Path.unlink, r"ema.safetensors is missing"),
    "trainer_state.json": (lambda p: p.write_bytes(b"{" * p.stat().st_size), r"trainer_state.json is damaged"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(runs, tmp_path, capsys, name):
    run, straight = runs
    out = _copy(run, tmp_path)
    damage, message = DAMAGE[name]
    damage(out / "checkpoints" / "step-0000004" / name)
    capsys.readouterr()
    final = train(_cfg(out), resume=True, progress=False)
    captured = capsys.readouterr()
    assert "checkpoints/step-0000004 cannot be used: " in captured.err
    assert re.search(message, captured.err), captured.err
    assert "resumed from" in captured.out and "step-0000002 at step 2" in captured.out
    assert _same(unimm.load(str(final)).model.state_dict(), straight)  # as if never damaged
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 3 and 4 of the damaged run are not logged twice
    assert checkpoint_problem(out / "checkpoints" / "step-0000004", needs_ema=True) is None  # rewritten


def test_no_intact_checkpoint_is_a_one_line_error_naming_each(runs, tmp_path, capsys):
    run, _ = runs
    out = _copy(run, tmp_path)
    for ckpt in list_checkpoints(out):
        _truncate(ckpt / "model.safetensors")
    assert train_cli([STAGE1, *RUN, f"output_dir={out}", "--resume", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("unimm train: error: --resume: no intact checkpoint under")
    assert "step-0000004: model.safetensors is truncated" in err and "step-0000002: model.safetensors" in err


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_earlier_ones(tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = {"n": 0}

    def filling(self, output_dir=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the step-4 checkpoint: a file half written, then the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", filling)
    out = tmp_path / "run"
    assert train_cli([STAGE1, *RUN, f"output_dir={out}", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"unimm train: error: could not write checkpoint {out}/checkpoints/step-0000004: "
                       "No space left on device; the earlier checkpoints are intact")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]  # no half-written folder
    assert checkpoint_problem(out / "checkpoints" / "step-0000002", needs_ema=True) is None
    assert not (out / "final").exists()


def test_a_fresh_run_over_a_runs_checkpoints_is_refused_unless_overwrite(runs, tmp_path, capsys):
    run, straight = runs
    out = _copy(run, tmp_path)
    assert train_cli([STAGE1, *RUN, f"output_dir={out}", "-q"]) == 2
    assert "already holds a run's checkpoints (up to step-0000004); pass --resume" in capsys.readouterr().err
    (out / "final" / "notes.txt").write_text("mine")
    assert train_cli([STAGE1, *RUN, f"output_dir={out}", "-q", "--overwrite"]) == 0
    assert (out / "final" / "notes.txt").read_text() == "mine"  # the export replaced only its own files
    assert _same(unimm.load(str(out / "final")).model.state_dict(), straight)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_real_full_disk_during_a_checkpoint_is_one_line(tmp_path, capsys):
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    # Room for the step-2 checkpoint (~2.3 MB) but not for step 4's as well.
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        out = mnt / "run"
        assert train_cli([STAGE1, *RUN, f"output_dir={out}", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        assert err[-1].startswith(f"unimm train: error: could not write checkpoint {out}/checkpoints/step-0000004: ")
        assert err[-1].endswith("; the earlier checkpoints are intact")
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
        assert checkpoint_problem(out / "checkpoints" / "step-0000002", needs_ema=True) is None
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_manifest_that_lists_too_little_is_not_a_checkpoint(runs, tmp_path):
    run, _ = runs
    out = _copy(run, tmp_path)
    ckpt = out / "checkpoints" / "step-0000004"
    (ckpt / ".unimm-manifest.json").write_text(json.dumps({"format": "unimm-manifest", "version": 1,
                                                           "kind": "checkpoint", "files": {}}))
    assert checkpoint_problem(ckpt, needs_ema=False) == (
        "its manifest does not list trainer_state.json, model weights, optimizer state")


def test_runs_never_write_over_another_runs_folder(runs, tmp_path, capsys):
    from unimm.cli import main as cli

    run, _ = runs
    out = _copy(run, tmp_path)
    # Another trainer into a unimm-train run's folder: refused before it touches metrics.jsonl.
    before = (out / "metrics.jsonl").read_text()
    tok = ROOT / "configs" / "tokenizers" / "vq-shapes.yaml"
    assert cli(["train-tokenizer", str(tok), "steps=1", f"output_dir={out}"]) == 2
    assert f"{out} holds another run: its train_config.json (it differs in " in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    # A fresh `unimm train` with another config, into a folder of logs without checkpoints: refused too.
    shutil.rmtree(out / "checkpoints")
    assert train_cli([STAGE1, *RUN, "optim.lr=0.5", f"output_dir={out}", "-q"]) == 2
    assert "holds another run: its train_config.json (it differs in optim)" in capsys.readouterr().err
    # A file named like a checkpoint is not taken for one, nor replaced.
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step-0000004").write_text("mine")
    assert train_cli([STAGE1, *RUN, f"output_dir={out}", "-q", "--overwrite"]) == 2
    assert "holds step-0000004, which is a file, not checkpoints" in capsys.readouterr().err
    assert (out / "checkpoints" / "step-0000004").read_text() == "mine"

"""Bad input is named where it enters: options, configs, work sizes, seeds, and the CLI's OS errors."""
import errno
import threading

import pytest
import torch
from PIL import Image

from unimm.cli import main
from unimm.pipelines.load import resolve_config
from unimm.pipelines.unified import DEFAULT_BATCH_SIZE, check_output_fits

# --------------------------------------------------------------------------- 1. options: type and finiteness


@pytest.mark.parametrize("kwargs, msg", [
    ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number, got inf"),
    ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
    ({"top_k": 1.5}, "top_k must be an integer, got 1.5"),
    ({"top_k": "5"}, "top_k must be an integer, got '5'"),
    ({"top_p": True}, "top_p must be a number, got True"),
])
def test_generate_names_an_option_of_the_wrong_type_or_not_finite(tiny_pipe, kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        tiny_pipe.generate("a red circle", **kwargs)


@pytest.mark.parametrize("kwargs, msg", [
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_k": 1.5}, "top_k must be an integer"),
    ({"top_p": float("inf")}, "top_p must be a finite number"),
])
def test_chat_names_an_option_of_the_wrong_type_or_not_finite(tiny_pipe, shapes_image, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        tiny_pipe.chat(shapes_image, "What colour is the circle?", **kwargs)


# --------------------------------------------------------------------------- 2. configs: sizes at load


@pytest.mark.parametrize("override, key", [
    ({"encoder": {"image_size": -32}}, "encoder.image_size must be >= 1, got -32"),
    ({"backbone": {"config": {"num_hidden_layers": -2}}}, "backbone.config.num_hidden_layers must be >= 1, got -2"),
    ({"backbone": {"config": {"hidden_size": 0}}}, "backbone.config.hidden_size must be >= 1, got 0"),
    ({"image_tokenizer": {"type": "vq", "block_out_channels": [16, 0]}}, "block_out_channels must be >= 1, got 0"),
    ({"sampling": {"chat_max_new_tokens": 0}}, "sampling.chat_max_new_tokens must be >= 1, got 0"),
])
def test_a_config_with_a_size_below_one_is_refused_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[")):
        resolve_config({"base": "tiny", **override})


def test_training_configs_refuse_sizes_below_one(tmp_path):
    from unimm.training.siglip import load_siglip_config
    from unimm.training.tokenizer import load_train_config

    with pytest.raises(ValueError, match="steps must be >= 1, got -1"):
        load_siglip_config("configs/recipes/siglip-shapes.yaml", ["steps=-1"])
    with pytest.raises(ValueError, match=r"vision.patch_size must be >= 1, got 0"):
        load_siglip_config("configs/recipes/siglip-shapes.yaml", ["vision.patch_size=0"])
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        load_train_config("configs/tokenizers/vq-shapes.yaml", ["batch_size=0"])


# --------------------------------------------------------------------------- 3. bounded work


def test_a_request_whose_images_would_not_fit_in_memory_is_refused_with_the_limit(tiny_pipe):
    with pytest.raises(ValueError, match=r"1,000,000,000 images of 32x32 px would take 2\.8 TB.*at most [\d,]+ per call"):
        tiny_pipe.generate("a red circle", num_images=10**9)
    with pytest.raises(ValueError, match=r"ask for at most 341 per call"):
        check_output_fits(1000, 32, available=2 * 2**20)  # 2 MB free: 1 MB for 3 KB images
    check_output_fits(341, 32, available=2 * 2**20)  # fits: no error


def test_generate_decodes_in_bounded_batches_by_default(tiny_pipe, monkeypatch):
    family = tiny_pipe.model.family
    rows, real = [], family.sample
    monkeypatch.setattr(family, "sample", lambda model, ids, *a, **kw: rows.append(len(ids)) or real(model, ids, *a, **kw))
    images = tiny_pipe.generate("a red circle", num_images=DEFAULT_BATCH_SIZE + 3, seed=0, temperature=0)
    assert rows == [DEFAULT_BATCH_SIZE, 3] and len(images) == DEFAULT_BATCH_SIZE + 3


# --------------------------------------------------------------------------- 4. seeds belong to their caller


def test_each_image_carries_its_calls_seed_even_when_threads_share_the_pipe(tiny_pipe):
    results, barrier = {}, threading.Barrier(4)

    def work(k):
        barrier.wait()
        results[k] = tiny_pipe.generate(["a red circle", "a blue square"], num_images=2)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for images in results.values():
        seed = images[0].info["seed"]
        assert [im.info["seed"] for im in images] == [seed] * 4
        assert [im.info["index"] for im in images] == [0, 1, 2, 3]
        assert [im.info["prompt"] for im in images] == ["a red circle"] * 2 + ["a blue square"] * 2
        again = tiny_pipe.generate(["a red circle", "a blue square"], num_images=2, seed=seed)
        assert [a.tobytes() for a in again] == [im.tobytes() for im in images]  # the seed remakes them
    assert len({images[0].info["seed"] for images in results.values()}) == 4


# --------------------------------------------------------------------------- 5. the CLI


@pytest.fixture(scope="module")
def bad(tmp_path_factory, saved_tiny):
    """Files for the census: good and bad images, configs, a damaged model, a file in a folder's place."""
    d = tmp_path_factory.mktemp("bad")
    (d / "afile").write_text("x")
    (d / "adir").mkdir()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(d / "ok.png")
    data = (d / "ok.png").read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("not an image")
    Image.new("1", (20000, 20000)).save(d / "bomb.png")  # 400 MP: a decompression bomb
    import shutil

    shutil.copytree(saved_tiny, d / "damaged")
    weights = d / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (d / "imgs").mkdir()
    for i in range(3):
        (d / "imgs" / f"{i}.png").write_text("junk")
    (d / "neg.yaml").write_text("base: tiny\nencoder: {image_size: -32}\n")
    (d / "layers.yaml").write_text("base: tiny\nbackbone: {config: {num_hidden_layers: -2}}\n")
    (d / "broken.yaml").write_text("a: [unclosed\n")
    (d / "train-neg.yaml").write_text(f"model: {d}/neg.yaml\noutput_dir: {d}/r1\nsteps: 2\n")
    (d / "train-key.yaml").write_text(f"model: tiny\noutput_dir: {d}/r2\nstepz: 2\n")
    (d / "train-proc.yaml").write_text("model: tiny\noutput_dir: /proc/unimm-census\nsteps: 2\n")
    (d / "tok-imgs.yaml").write_text(f"tokenizer: {{type: vq}}\noutput_dir: {d}/r4\nsteps: 2\n"
                                     f"data: {{source: folder, path: {d}/imgs}}\n")
    return d


def _census(d, tiny):
    G = ["generate", "a red circle", "--model", tiny, "-q", "-o", f"{d}/g.png"]
    C = ["chat", "What colour is the circle?", "--model", tiny, "--image", f"{d}/ok.png"]
    E = ["eval", "--model", tiny, "--n", "4", "-q"]
    S = "configs/recipes/siglip-shapes.yaml"
    T = "configs/tokenizers/vq-shapes.yaml"
    return [  # (argv, what the one-line message must say)
        (G + ["--temperature", "nan"], "temperature must be a finite number"),
        (G + ["--guidance-scale", "inf"], "guidance_scale must be a finite number"),
        (G + ["--top-k", "1.5"], "invalid int value: '1.5'"),
        (G + ["--temperature", "hot"], "invalid float value: 'hot'"),
        (G + ["-n", "0"], "num_images must be >= 1"),
        (G + ["-n", "1000000000"], "ask for at most"),
        (G + ["--seed", "-1"], "seed must be in"),
        (G + ["--batch-size", "0"], "batch_size must be >= 1"),
        (G + ["--upscale", "0"], "--upscale must be >= 1"),
        (G[:-1] + ["/proc/unimm-census.png"], "cannot write in /proc"),
        (G[:-1] + [f"{d}/adir"], "is a directory"),
        (G[:-1] + [f"{d}/afile/out.png"], "is a file, not a folder"),
        (G[:-1] + [f"{d}/out.xyz"], ".xyz is not an image format"),
        (G + ["--device", "cuda:99"] if torch.cuda.is_available() else G + ["--device", "cuda"], "device 'cuda"),
        (G + ["--device", "bogus"], "unknown device 'bogus'"),
        (["generate", "x", "--model", f"{d}/damaged", "-q", "-o", f"{d}/g.png"], "model.safetensors in"),
        (["generate", "x", "--model", f"{d}/nope"], "neither a unimm model directory"),
        (G + ["--set", "foo=1"], "--set foo: not a sampling option"),
        (G + ["--set", "top_k=abc"], "'abc' is not an integer"),
        (G + ["--set", "noequals"], "--set takes NAME=VALUE"),
        (G + ["--solver", "rk4"], "solver does not apply to the autoregressive paradigm"),
        (G + ["--steps", "5"], "steps does not apply to the autoregressive paradigm"),
        (["generate", "", "--model", tiny, "-q", "-o", f"{d}/g.png"], "the prompt is empty"),
        (["generate", "x", "--model", f"{d}/neg.yaml", "-o", f"{d}/g.png"], "encoder.image_size must be >= 1"),
        (["generate", "x", "--model", f"{d}/layers.yaml", "-o", f"{d}/g.png"], "num_hidden_layers must be >= 1"),
        (["generate", "x", "--model", f"{d}/broken.yaml", "-o", f"{d}/g.png"], "at line 2, column 1"),
        (["generate", "x", "--model", "tiny-masked", "--compile", "-o", f"{d}/g.png"], "compile is not available"),
        (["chat", "q", "--model", tiny, "--image", f"{d}/missing.png"], "image file not found"),
        (["chat", "q", "--model", tiny, "--image", f"{d}/trunc.png"], "truncated"),
        (["chat", "q", "--model", tiny, "--image", f"{d}/text.png"], "not an image file"),
        (["chat", "q", "--model", tiny, "--image", f"{d}/bomb.png"], "too large to open safely"),
        (C + ["--temperature", "-1"], "temperature must be >= 0"),
        (C + ["--temperature", "nan"], "temperature must be a finite number"),
        (C + ["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
        (C + ["--top-p", "0"], "top_p must be in (0, 1]"),
        (C + ["--top-k", "-3"], "top_k must be >= 0"),
        (["chat", "", "--model", tiny], "the question is empty"),
        (["eval", "--check", f"{d}/trunc.png", "a red circle"], "truncated"),
        (["eval", "--check", f"{d}/bomb.png", "a red circle"], "too large to open safely"),
        (["eval", "--check", f"{d}/ok.png", "a flying car"], "cannot score 'a flying car'"),
        (E[:-2] + ["0"], "--n must be >= 1"),
        (["eval", "--task", "bogus"], "invalid choice: 'bogus'"),
        (E + ["--out", "/proc/unimm-census.json"], "cannot write in /proc"),
        (E + ["--out", f"{d}/adir"], "is a directory"),
        (E + ["--grid", f"{d}/afile/grid.png"], "is a file, not a folder"),
        (["convert", "janus", f"{d}/nope", f"{d}/c1"], "is not a directory"),
        (["convert", "bogus", "a", "b"], "invalid choice: 'bogus'"),
        (["export", "janus", f"{d}/nope", f"{d}/e1"], "config.json is missing"),
        (["export", "janus", tiny, f"{d}/afile"], "it is a file, not a folder"),
        (["demo", "--port", "99999", "--model", tiny], "--port must be in 0-65535"),
        (["demo", "--max-images", "0", "--model", tiny], "--max-images must be >= 1"),
        (["demo", "--model", f"{d}/nope"], "neither a unimm model directory"),
        (["demo", "--device", "bogus", "--model", tiny], "unknown device 'bogus'"),
        (["train", f"{d}/missing.yaml"], "config file not found"),
        (["train", f"{d}/train-key.yaml"], "unknown config key 'stepz'"),
        (["train", f"{d}/train-neg.yaml"], "encoder.image_size must be >= 1"),
        (["train", f"{d}/train-proc.yaml"], "/proc/unimm-census"),
        (["train", f"{d}/broken.yaml"], "cannot parse config file"),
        (["train", "configs/train/tiny-stage1.yaml", "steps"], "not of the form key=value"),
        (["train-tokenizer", f"{d}/missing.yaml"], "config file not found"),
        (["train-tokenizer", T, "steps=0"], "steps must be >= 1"),
        (["train-tokenizer", f"{d}/tok-imgs.yaml"], "no readable image in the folder"),
        (["train-tokenizer", T, "output_dir=/proc/unimm-census"], "/proc/unimm-census"),
        (["train-siglip", f"{d}/missing.yaml"], "config file not found"),
        (["train-siglip", S, "steps=-1"], "steps must be >= 1, got -1"),
        (["train-siglip", S, "nokey=3"], "unknown config key 'nokey'"),
        (["bogus-command"], "invalid choice: 'bogus-command'"),
    ]


def test_cli_census_every_bad_input_is_one_line_and_exit_2(bad, saved_tiny, capsys):
    cases = _census(bad, str(saved_tiny))
    assert len(cases) >= 40
    commands = {argv[0] for argv, _ in cases}
    assert {"generate", "chat", "eval", "convert", "export", "demo", "train", "train-tokenizer",
            "train-siglip"} <= commands
    failures = []
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("unimm: warning:")]
        if code != 2 or len(lines) != 1 or "Traceback" in err or expected not in lines[0]:
            failures.append((argv, code, lines))
    assert not failures, "\n".join(f"{a}: exit {c}: {l}" for a, c, l in failures)
    assert not (bad / "r1").exists() and not (bad / "r2").exists()  # refused before any folder was made


def test_generate_onto_a_full_disk_leaves_no_file_of_its_own_and_keeps_the_old_ones(saved_tiny, tmp_path,
                                                                                   monkeypatch, capsys):
    from unimm import cli

    (tmp_path / "out-9.png").write_text("not ours")  # another file in the folder stays
    (tmp_path / "out-0.png").write_text("an earlier run's image")  # replaced only if the whole run is written
    real, calls = cli._write_temp, []

    def write(image, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(image, path)

    monkeypatch.setattr(cli, "_write_temp", write)
    code = main(["generate", "a red circle", "--model", str(saved_tiny), "-n", "4", "-q", "-o", str(tmp_path / "out.png")])
    assert code == 2
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-0.png", "out-9.png"]  # no temp files, nothing new
    assert (tmp_path / "out-0.png").read_text() == "an earlier run's image"


def test_output_formats_are_checked_before_any_work(saved_tiny, tmp_path, capsys):
    from unimm.eval.cli import main as eval_main

    for ext in (".psd", ".xyz", ""):  # .psd: PIL reads it but cannot write it
        assert main(["generate", "x", "--model", str(saved_tiny), "-q", "-o", str(tmp_path / f"o{ext}")]) == 2
        assert "is not an image format unimm can write" in capsys.readouterr().err
        assert eval_main(["--model", str(saved_tiny), "--n", "4", "-q", "--out", str(tmp_path / "r.json"),
                          "--grid", str(tmp_path / f"g{ext}")]) == 2
        assert "is not an image format unimm can write" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    assert main(["generate", "x", "--model", str(saved_tiny), "-q", "-o", str(tmp_path / "u.png"),
                 "--upscale", "1000000"]) == 2
    assert "ask for at most" in capsys.readouterr().err


def test_a_list_for_a_tuple_field_is_checked_too():
    from unimm.config import from_dict
    from unimm.tokenizers.quantizers import QuantizerConfig

    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        from_dict(QuantizerConfig, {"type": "fsq", "levels": [8, 0, 5]})


def test_generated_files_are_written_whole_with_the_usual_mode(saved_tiny, tmp_path):
    import os

    assert main(["generate", "a red circle", "--model", str(saved_tiny), "-n", "2", "-q", "-o", str(tmp_path / "x.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-0.png", "x-1.png"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "x-0.png").stat().st_mode & 0o777 == 0o666 & ~mask
    assert Image.open(tmp_path / "x-1.png").size == (32, 32)

"""Every example in the README runs as written (the documented API cannot rot)."""
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import unimm

README = Path(__file__).resolve().parents[1] / "README.md"
# This section's examples need a Janus checkpoint: test_readme_janus_examples_run builds one.
JANUS_SECTION = "## Using Janus / Janus-Pro checkpoints"


def _split() -> tuple[str, str]:
    """(the README without the Janus section, the Janus section)."""
    text = README.read_text()
    start = text.find(JANUS_SECTION)
    if start < 0:
        return text, ""
    end = text.find("\n## ", start + len(JANUS_SECTION))
    end = len(text) if end < 0 else end + 1
    return text[:start] + text[end:], text[start:end]


def _blocks(lang: str, janus: bool = False) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _split()[1 if janus else 0], flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert blocks, "the README has no Python examples"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "my-model" / "model.safetensors").is_file()


def _cli_lines(janus: bool = False) -> list[list[str]]:
    lines = [ln.strip() for b in _blocks("bash", janus) for ln in b.splitlines() if ln.strip().startswith("unimm ")]
    return [shlex.split(ln)[1:] for ln in lines]


# `unimm demo` serves until stopped; tests/test_app.py launches the same command and drives it.
SERVERS = {"demo"}


# Training examples run as written but shortened, so the suite stays fast.
SHORTEN = {"train-tokenizer": ["steps=3", "batch_size=8", "data.num_samples=48", "log_every=1", "-q"],
           "train": ["steps=2", "batch_size=4", "save_every=1", "-q"],
           "eval": ["--n", "8", "-q"]}  # the last --n wins


def test_readme_cli_examples_run(tmp_path, monkeypatch, capsys):
    from unimm.cli import main

    lines = [a for a in _cli_lines() if a[0] not in SERVERS and FAST_TRAINING not in a]
    assert [a[0] for a in lines] == ["generate", "eval", "chat", "generate", "train-tokenizer", "train-tokenizer",
                                     "train", "train", "train", "train", "eval", "eval", "eval", "eval", "generate"]
    # The main command's image must pass the evaluator (`eval --check` exits 0 only then).
    assert lines[1][:2] == ["eval", "--check"] and lines[1][2] == lines[0][lines[0].index("-o") + 1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    for args in lines:
        assert main(args + SHORTEN.get(args[0], [])) == 0, args
    assert unimm.load(str(tmp_path / "runs" / "tiny-stage3" / "final")).config.name == "tiny"
    assert (tmp_path / "runs" / "tiny-dpo" / "final" / "model.safetensors").is_file()  # the preference stage
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) >= {"generation", "vqa"} and (tmp_path / "grid.png").is_file()
    assert "tokenizer" in json.loads((tmp_path / "tokenizer-report.json").read_text())
    assert (tmp_path / "runs" / "vq-shapes" / "tokenizer" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "vae-shapes" / "tokenizer" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert (tmp_path / "out.png").is_file()
    assert Image.open(tmp_path / "square.png").size == (64, 64)  # the DiT default's example
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == [f"blue-{i}.png" for i in range(4)]
    assert out.strip().splitlines()[-1]  # the streamed answer


FAST_TRAINING = "configs/recipes/stage2.yaml"  # its own process: accelerate fixes the precision once per process


def test_readme_fast_training_example_runs_in_bf16_compiled(tmp_path):
    """The fastest CPU training line: stage 2 with every speed option, shortened (from the shipped
    default instead of stage 1's export, which a clone does not have) and run in its own process."""
    import os

    (line,) = [a for a in _cli_lines() if FAST_TRAINING in a]
    assert line[:2] == ["train", FAST_TRAINING]
    assert {"mixed_precision=bf16", "data.length_buckets=3", "data.pad_multiple=16", "compile=true"} <= set(line)
    out = tmp_path / "fast"
    cmd = [sys.executable, "-c", "import sys; from unimm.cli import main; sys.exit(main(sys.argv[1:]))", *line,
           "init_from=weights/default", f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}",
           "data.sources.t2i.num_samples=16", "steps=2", "batch_size=4", "save_every=2", "log_every=1", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    r = subprocess.run(cmd, cwd=README.parent, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert unimm.load(str(out / "final")).config.name == unimm.load().config.name


def _launch_lines(prefix: str) -> list[list[str]]:
    lines = [ln.strip() for b in _blocks("bash") for ln in b.splitlines() if ln.strip().startswith(prefix)]
    return [shlex.split(ln) for ln in lines]


def test_readme_torchrun_example_runs_two_processes(tmp_path):
    import os

    (line,) = _launch_lines("OMP_NUM_THREADS=1 torchrun")
    assert line[:4] == ["OMP_NUM_THREADS=1", "torchrun", "--nproc_per_node", "2"]
    port = __import__("socket").create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    cmd = [sys.executable, "-m", "torch.distributed.run", *line[2:4], "--master_port", str(free), *line[4:],
           f"output_dir={tmp_path / 'ddp'}", "steps=2", "-q"]
    r = subprocess.run(cmd, cwd=README.parent, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes (MULTI_CPU, cpu)" in r.stdout
    assert (tmp_path / "ddp" / "final" / "config.json").is_file()


def test_readme_fsdp_example_shards_over_two_cpu_processes(tmp_path):
    import os

    (line,) = _launch_lines("ACCELERATE_USE_FSDP=true")
    env_words = [w for w in line if "=" in w and w.split("=")[0].isupper()]
    assert env_words == ["ACCELERATE_USE_FSDP=true", "FSDP_VERSION=2", "OMP_NUM_THREADS=1"]
    rest = line[len(env_words):]
    assert rest[:3] == ["torchrun", "--nproc_per_node", "2"]
    port = __import__("socket").create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    cmd = [sys.executable, "-m", "torch.distributed.run", *rest[1:3], "--master_port", str(free), *rest[3:],
           f"output_dir={tmp_path / 'fsdp'}", "steps=2", "-q"]
    env = {**os.environ, **dict(w.split("=", 1) for w in env_words)}
    r = subprocess.run(cmd, cwd=README.parent, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes (FSDP, cpu)" in r.stdout
    assert (tmp_path / "fsdp" / "final" / "config.json").is_file()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="the DDP config launches GPU processes")
def test_readme_accelerate_gpu_example_runs(tmp_path):
    (line,) = _launch_lines("accelerate launch")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *line[2:], f"output_dir={tmp_path / 'ddp'}", "steps=2", "-q"]
    r = subprocess.run(cmd, cwd=README.parent, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ddp" / "final" / "config.json").is_file()


def test_readme_demo_command_is_the_one_the_app_tests_launch():
    demo = [a for a in _cli_lines() if a[0] == "demo"]
    assert demo == [["demo", "--port", "7860"]]
    from unimm.app import parse_args

    args = parse_args(demo[0][1:])
    assert (args.model, args.port) == (None, 7860)  # the default model (tests/test_default_model.py opens it)


def test_readme_setup_and_test_commands_match_ci():
    ci = (README.parent / ".ci" / "run").read_text()
    setup = [ln for ln in _blocks("bash")[0].splitlines() if ln.startswith("pip install")]
    assert setup and all(ln in ci for ln in setup)
    assert _blocks("bash")[1].strip() in ci


def test_console_script_reports_bad_input_without_a_traceback(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    exe = Path(sys.executable).with_name("unimm")
    if not exe.exists():
        pytest.skip("the unimm console script is not installed in this environment")
    r = subprocess.run([str(exe), "chat", "--image", str(bad), "What is it?", "--model", "tiny"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "cannot read image" in r.stderr and "Traceback" not in r.stderr


def test_readme_janus_examples_run(tmp_path, monkeypatch):
    """The Janus section's commands and code, on a small random Janus-Pro-style checkpoint."""
    from janus_helpers import CONFIGS, build_janus

    from unimm.cli import main

    build_janus(tmp_path / "Janus-Pro-1B", **CONFIGS["mha-tied-32px"])
    monkeypatch.chdir(tmp_path)
    lines = _cli_lines(janus=True)
    assert [a[:2] for a in lines] == [["convert", "janus"], ["export", "janus"]]
    for args in lines:
        assert main(args) == 0, args
    blocks = _blocks("python", janus=True)
    assert blocks
    for code in blocks:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    assert unimm.load(str(tmp_path / "janus-pro-1b")).config.prompt.user == "<|User|>: {content}\n\n"
    assert (tmp_path / "janus-pro-1b-hf" / "processor_config.json").is_file()

"""`pip install .` carries the app, the model configs and the shipped weights; optional parts name their extra."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "unimm").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"
    assert {"unimm.configs", "unimm.weights"} <= listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel `pip wheel .` builds, installed (without its dependencies) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("unimm-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True)
    return tmp


def _run(installed, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(installed / "site")}
    env.pop("UNIMM_MODEL", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=installed, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_wheel_install_outside_the_clone_finds_configs_weights_and_the_app(installed):
    site = installed / "site" / "unimm"
    assert (site / "app.py").is_file() and (site / "configs" / "models" / "tiny.yaml").is_file()
    assert (site / "weights" / "default" / "model.safetensors").is_file()
    out = _run(installed, """
import unimm
from unimm.pipelines.load import DEFAULT_MODEL_DIR, available_configs, shipped_models
print(unimm.__file__)
print(DEFAULT_MODEL_DIR)
print(available_configs().count("tiny"))
pipe = unimm.load()
print(pipe.generate("a red circle on the left", seed=0)[0].size)
print(all(unimm.load(name).generate("a red circle", seed=0)[0].size == (64, 64) for name in shipped_models()))
import unimm.app
print(unimm.app.parse_args([]).port)
""").splitlines()
    assert out[0].startswith(str(installed / "site"))  # the installed copy, not the clone
    assert out[1] == str(site / "weights" / "default")
    assert out[2:] == ["1", "(64, 64)", "True", "7860"]  # every shipped model loads and draws from the wheel


def test_a_missing_optional_part_names_its_extra(monkeypatch, capsys):
    from unimm.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if gradio were not installed
    monkeypatch.delitem(sys.modules, "unimm.app", raising=False)
    assert main(["demo", "--port", "7999"]) == 2
    err = capsys.readouterr().err
    assert 'the unimm app needs gradio, which is not installed: pip install "unimm[app]"' in err
    assert "Traceback" not in err


def test_lora_without_peft_names_the_train_extra(monkeypatch, capsys, tmp_path):
    from unimm.train import main

    monkeypatch.setitem(sys.modules, "peft", None)
    cfg = str(ROOT / "configs" / "train" / "tiny-stage1.yaml")
    assert main([cfg, "steps=1", "lora.r=4", f"output_dir={tmp_path / 'run'}", "-q"]) == 2
    assert 'LoRA (lora: in the training config) needs peft, which is not installed: pip install "unimm[train]"' \
        in capsys.readouterr().err

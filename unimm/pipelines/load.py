"""`unimm.load(...)`: open a saved model, or build a fresh one from a config."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..config import ConfigError, merge_config, read_config_file
from ..folders import reading
from ..models.unified import CONFIG_NAME, UnifiedConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def _package_folder(package: str, repo_folder: str) -> Path:
    """Where the model configs / shipped weights are: in a clone, the repository's own folder (an
    editable install points there too); in a wheel install, the package data unimm.configs /
    unimm.weights (pyproject.toml maps the repository folders onto those packages)."""
    here = REPO_ROOT / repo_folder
    if here.is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return here
    import importlib.util

    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else here


# Named configs: the package's configs/models, then ./configs/models of the working directory.
CONFIG_DIRS = [_package_folder("unimm.configs", "configs") / "models", Path("configs") / "models"]
WEIGHTS_DIR = _package_folder("unimm.weights", "weights")
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "default"


def shipped_models() -> list[str]:
    """Names of the trained models shipped under weights/ ("default", "default-masked", ...)."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / CONFIG_NAME).is_file())


def available_configs() -> list[str]:
    """Config names, each once (the working directory may be the repository itself)."""
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def _find_named_config(name: str) -> Path | None:
    for d in CONFIG_DIRS:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    return None


def read_model_config(path: Path, _seen: tuple = ()) -> dict:
    """Read a model config file; `base: NAME_OR_PATH` inherits from another config (deep merge)."""
    if path.resolve() in _seen:
        raise ConfigError(f"config {path} inherits from itself through 'base'")
    return _with_base(read_config_file(path), path.parent, str(path), _seen + (path.resolve(),))


def _with_base(data: dict, folder: Path, where: str, seen: tuple = ()) -> dict:
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = _find_named_config(base) if not str(base).endswith((".yaml", ".yml", ".json")) else folder / base
    if base_path is None or not base_path.is_file():
        raise ConfigError(f"config {where}: base {base!r} not found; available: {', '.join(available_configs())}")
    return merge_config(read_model_config(base_path, seen), data)


def resolve_config(spec) -> UnifiedConfig:
    """A config from a UnifiedConfig, a dict, a config file path or a config name under configs/models."""
    if isinstance(spec, UnifiedConfig):
        return spec
    if isinstance(spec, dict):
        return UnifiedConfig.from_dict(_with_base(spec, Path.cwd(), "mapping"))
    path = Path(spec)
    if path.is_file():
        return UnifiedConfig.from_dict(read_model_config(path))
    named = _find_named_config(str(spec))
    if named is not None:
        return UnifiedConfig.from_dict(read_model_config(named))
    raise FileNotFoundError(
        f"{spec!r} is neither a unimm model directory, a shipped model, a config file, nor a config name; "
        f"shipped models: {', '.join(shipped_models()) or 'none'}; available configs: {', '.join(available_configs())}"
    )


class UntrainedModelWarning(UserWarning):
    """load() was given a config, not a trained model: the weights are random."""


def build_pipeline(config: UnifiedConfig, seed: int = 0):
    """A fresh model from `config` with random weights drawn from `seed` (the same on every call);
    the global RNG is left as it was."""
    from .unified import UnimmPipeline

    devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return UnimmPipeline.from_config(config)


def load(path_or_config=None, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
         seed: int = 0, changes: dict | None = None, fresh=()):
    """Open a pipeline.

    - a directory written by `save_pretrained` (config.json + safetensors + tokenizer);
    - a config (file path, name under configs/models, dict or UnifiedConfig): a fresh,
      untrained model with random weights drawn from `seed`, e.g. for training or tests
      (an UntrainedModelWarning says so);
    - the name of a model shipped under weights/ ("default", "default-masked", ...; a local
      directory of that name comes first);
    - nothing: the default model shipped under weights/default.

    `changes` (saved models only) merges options into the saved config; weights they add keep
    their initialisation (e.g. {"generation": {"position_embedding": True}} before fine-tuning).
    `fresh` names the parts such changes rebuild, whose saved weights are not read (e.g.
    ("gen_head", "image_tokenizer") to give a model another generation family and tokenizer).
    """
    from .unified import UnimmPipeline, check_device

    check_device(device)  # a device this machine lacks is named before the model is read
    if path_or_config is None:
        path_or_config = os.environ.get("UNIMM_MODEL") or DEFAULT_MODEL_DIR
        if not Path(path_or_config).is_dir():
            raise FileNotFoundError(
                f"no default model found at {path_or_config}; pass a model directory or a config "
                f"name ({', '.join(available_configs())})"
            )
    is_dir = isinstance(path_or_config, (str, os.PathLike)) and Path(path_or_config).is_dir()
    if (not is_dir and isinstance(path_or_config, str) and not Path(path_or_config).is_file()
            and path_or_config in shipped_models()):
        path_or_config, is_dir = WEIGHTS_DIR / path_or_config, True
    if is_dir and _find_named_config(str(path_or_config)) is None:
        with reading(path_or_config):  # a save swapping this folder in waits until it is read
            if not (Path(path_or_config) / CONFIG_NAME).is_file():
                raise FileNotFoundError(f"{path_or_config} is not a unimm model directory: {CONFIG_NAME} is missing")
            pipe = UnimmPipeline.from_pretrained(path_or_config, changes, fresh)
    elif is_dir and (Path(path_or_config) / CONFIG_NAME).is_file():
        pipe = UnimmPipeline.from_pretrained(path_or_config, changes, fresh)
    else:
        if changes or fresh:
            raise ValueError("changes apply to a saved model; for a config, edit the config (or use its base:)")
        config = resolve_config(path_or_config)
        what = repr(path_or_config) if isinstance(path_or_config, (str, os.PathLike)) else "this config"
        warnings.warn(f"{what} builds an untrained model with random weights (seed {seed}): its images and answers "
                      "are noise until it is trained. Open a trained model directory to use one (unimm.load() "
                      "opens the shipped default).", UntrainedModelWarning, stacklevel=2)
        pipe = build_pipeline(config, seed)
    return pipe.to(device=device, dtype=dtype)

"""Weights on disk: safetensors only, written atomically, loaded with checks.

Loading never unpickles: weights are read with safetensors, configs are JSON.
Saves go through `unimm.folders.atomic_directory` (what a save may write over,
atomic moves, manifests); this module writes and reads the tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ConfigError
from .folders import atomic_directory, check_weights_files, preview, reading

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def save_weights(module: torch.nn.Module, directory: str | os.PathLike, max_shard_size: str = "5GB",
                 dtype: torch.dtype | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Write `module`'s state dict as (possibly sharded) safetensors; tied tensors are stored once.

    `dtype` stores the floating-point tensors in that type (e.g. bfloat16 to halve a
    shipped checkpoint); integer buffers keep theirs. Keys starting with a prefix in
    `exclude` are left out (parts saved in their own library's layout).
    """
    from huggingface_hub import save_torch_state_dict

    state = {k: v for k, v in module.state_dict().items() if not k.startswith(exclude)}
    if dtype is not None:
        # Cast once per storage, so tensors that were tied stay tied (and stored once).
        cast: dict[int, torch.Tensor] = {}
        for k, v in state.items():
            if v.is_floating_point() and v.dtype != dtype:
                ptr = v.data_ptr()
                if ptr not in cast:
                    cast[ptr] = v.to(dtype)
                state[k] = cast[ptr]
    save_torch_state_dict(state, directory, max_shard_size=max_shard_size)


def _weight_files(directory: Path, name: str = WEIGHTS_NAME) -> list[Path]:
    """The safetensors file `name` in `directory`, or the shards its `name.index.json` lists."""
    single = directory / name
    if single.is_file():
        return [single]
    index = directory / f"{name}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"weights shard(s) missing in {directory}: {', '.join(missing)}")
        return [directory / s for s in shards]
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = f" (found {', '.join(pickled)}: pickled weights are not read; save with safetensors)" if pickled else ""
    raise FileNotFoundError(
        f"no weights file in {directory}: expected {name} or {index.name}{hint}"
    )


def read_weights(directory: str | os.PathLike, name: str = WEIGHTS_NAME) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint; never unpickles."""
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(directory), name):
        state.update(load_file(str(f)))
    return state


def load_weights(module: torch.nn.Module, directory: str | os.PathLike, skip: tuple[str, ...] = (),
                 new: frozenset[str] = frozenset(), fresh: tuple[str, ...] = ()) -> None:
    """Load safetensors weights into `module`, failing loudly on any mismatch.

    Keys absent from the files are allowed only when they alias a stored tensor
    (tied embeddings), since those were deduplicated when saving, when they start
    with a prefix in `skip` (parts loaded from their own subfolders), or when they are
    in `new` (weights a config change adds; they keep their initialisation). Weights under a
    prefix in `fresh` (parts a config change rebuilds) are neither read nor required.
    """
    directory = Path(directory)
    check_weights_files(directory)
    state = {k: v for k, v in read_weights(directory).items() if not k.startswith(fresh)}

    skip = skip + fresh
    expected = {k: v for k, v in module.state_dict(keep_vars=True).items() if not k.startswith(skip)}
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ConfigError(
            f"checkpoint {directory} has weights the config does not build: {preview(unexpected)}"
        )
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        raise ConfigError(
            f"checkpoint {directory} does not match its config; tensor shapes differ for "
            + preview(bad_shapes)
        )
    # Tied parameters share storage; a key missing from the file is fine if a
    # stored key points at the same tensor.
    by_ptr: dict[int, list[str]] = {}
    for k, v in expected.items():
        by_ptr.setdefault(v.data_ptr(), []).append(k)
    missing = [
        k for k in expected
        if k not in state and k not in new and not any(alias in state for alias in by_ptr[expected[k].data_ptr()])
    ]
    if missing:
        raise ConfigError(f"checkpoint {directory} lacks weights for: {preview(sorted(missing))}")
    module.load_state_dict(state, strict=False)


LIBRARY_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file name for a model's weights


def save_library_part(part: torch.nn.Module, folder: Path, dtype: torch.dtype, max_shard_size: str = "5GB") -> None:
    """A diffusers model in its own layout (config.json + safetensors, sharded past
    `max_shard_size`), its weights stored in `dtype`."""
    import copy

    stored = part if next(part.parameters()).dtype == dtype else copy.deepcopy(part).to(dtype)
    stored.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)


def load_library_part(part: torch.nn.Module, folder: Path) -> None:
    """Load weights saved by `save_library_part` into `part`, built from the model's config;
    the folder's config.json must describe the same model. Never unpickles. A part that is
    not a diffusers model (the IP-Adapter) has its own `save_pretrained`, a `config` dict
    and a `weights_name`."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder.parent} lacks {folder.name}/{config_file.name}")
    saved = json.loads(config_file.read_text())
    differ = sorted(k for k, v in part.config.items() if not k.startswith("_") and k in saved
                    and json.loads(json.dumps(v)) != saved[k])
    if differ:
        raise ConfigError(f"{config_file} does not match the model's config: {preview(differ)}")
    # One file, or the shards of its index; a part may name its own file (the IP-Adapter's).
    state = read_weights(folder, getattr(part, "weights_name", LIBRARY_WEIGHTS))
    expected = part.state_dict()
    problems = sorted(set(state) ^ set(expected)) + [k for k in state if k in expected
                                                     and tuple(state[k].shape) != tuple(expected[k].shape)]
    if problems:
        raise ConfigError(f"the weights in {folder} do not match the model's config: {preview(problems)}")
    part.load_state_dict(state)


class SaveLoadMixin:
    """`save_pretrained` / `from_pretrained` for a component: config.json (+ its family `type`) + safetensors.

    Subclasses set `config_class` and `type_name` and take their config as the
    only constructor argument.
    """

    config_class: type
    type_name: str

    def save_pretrained(self, directory, overwrite: bool = False) -> None:
        """config.json + safetensors, swapped in atomically (see `atomic_directory` for `overwrite`)."""
        from .config import to_dict, write_json

        with atomic_directory(directory, overwrite=overwrite, kind=self.type_name) as tmp:
            write_json({"type": self.type_name, **to_dict(self.resolved_config())}, Path(tmp) / "config.json")
            save_weights(self, tmp)

    def resolved_config(self):
        return self.config

    @classmethod
    def read_config(cls, directory):
        from .config import from_dict

        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved {cls.__name__}: config.json is missing")
        data = json.loads(path.read_text())
        kind = data.pop("type", cls.type_name)
        if kind != cls.type_name:
            raise ConfigError(f"{directory} holds a {kind!r} component, not {cls.type_name!r}")
        return from_dict(cls.config_class, data, f"{cls.__name__} config in {directory}")

    @classmethod
    def from_pretrained(cls, directory):
        with reading(directory):
            module = cls(cls.read_config(directory))
            load_weights(module, directory)
        return module.eval()

"""Config dataclasses <-> plain dicts, JSON and YAML.

Every component has a small dataclass config. Configs are read strictly: an
unknown key is an error that names the key, where it was found and the keys
that are valid there, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be built (unknown key, bad value, missing file)."""


def check_keys(given: dict, valid: typing.Iterable[str], where: str) -> None:
    valid = sorted(set(valid))
    unknown = sorted(k for k in given if k not in valid)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
            f"in {where}; valid keys: {', '.join(valid)}"
        )


def from_dict(cls: type[T], data: dict | T | None, where: str | None = None) -> T:
    """Build dataclass `cls` from a (possibly partial) dict, recursing into nested dataclasses."""
    where = where or cls.__name__
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(data, fields, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        sub = _dataclass_in(hint)
        if sub is not None and (isinstance(value, dict) or value is None):
            optional = type(None) in typing.get_args(hint)
            # `section: null` means "the defaults" unless the field itself may be None.
            kwargs[name] = None if value is None and optional else from_dict(sub, value, f"{where}.{name}")
        elif isinstance(value, list) and typing.get_origin(hint) is tuple:
            _check_sizes(name, value, where)
            kwargs[name] = tuple(value)
        elif isinstance(value, str) and float in (hint, *typing.get_args(hint)):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it means.
            try:
                kwargs[name] = float(value)
            except ValueError:
                raise ConfigError(f"bad value in {where}: {name} must be a number, got {value!r}") from None
        else:
            _check_type(value, hint, f"{where}.{name}")
            _check_sizes(name, value, where)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad value in {where}: {e}") from e


# Counts and sizes that must be >= 1 wherever they appear: in our configs and in the
# transformers / diffusers keyword dicts they carry (backbone.config, encoder.siglip, ...).
# Checked when a config is read, so a 0-layer model or a negative image size is refused
# naming the key, not built and broken later.
POSITIVE_KEYS = frozenset({
    "image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "vocab_size", "head_dim", "num_channels", "latent_channels",
    "norm_num_groups", "layers_per_block", "block_out_channels", "levels", "num_codes", "codebook_size",
    "embed_dim", "head_hidden", "num_queries", "num_latents", "max_prompt_tokens", "connector_heads", "steps", "batch_size", "text_length", "scale",
    "num_samples", "grad_accum", "eval_size", "chat_max_new_tokens",
})


def _check_sizes(name: str, value, where: str) -> None:
    """Raise ConfigError for a count or size below 1 under `name` (recursing into dicts and lists)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_sizes(str(k), v, f"{where}.{name}")
    elif isinstance(value, list) and name in POSITIVE_KEYS:
        for v in value:
            _check_sizes(name, v, where)
    elif name in POSITIVE_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
        raise ConfigError(f"{where}.{name} must be >= 1, got {value}")


_SIMPLE = (bool, int, float, str)


def _check_type(value, hint, where: str) -> None:
    """Reject a value of the wrong simple type (a string where a number goes, ...) at load time."""
    import types

    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
    else:
        members = (hint,)
    if not all(h in _SIMPLE or h is type(None) for h in members):
        return  # containers and other types are checked by the component itself
    allowed = list(members)
    if value is None:
        if type(None) not in allowed:
            raise ConfigError(f"{where} must not be null")
        return
    ok = any(
        (h is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (h is int and isinstance(value, int) and not isinstance(value, bool))
        or (h in (bool, str) and isinstance(value, h))
        for h in allowed if h is not type(None)
    )
    if not ok:
        names = "/".join(h.__name__ for h in allowed if h is not type(None))
        raise ConfigError(f"{where} must be {names}, got {value!r}")


def _dataclass_in(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):  # Optional[X] / X | None
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def _parse_problem(error: Exception) -> str:
    """A YAML / JSON parse error in one line: what is wrong, and the line and column."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if problem and mark is not None:  # yaml's marks count from 0
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a JSON or YAML file into a dict, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"cannot parse config file {path}: {_parse_problem(e)}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def write_json(data: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def typed_from_dict(registry: dict[str, type], spec: dict | None, default: str, where: str):
    """Read a `{"type": name, **fields}` spec against the dataclass registered for `name`.

    Returns (name, config). Families chosen by `type` (projectors, image
    tokenizers) share this, so their errors read the same.
    """
    spec = dict(spec or {})
    kind = spec.pop("type", default)
    if kind not in registry:
        raise ConfigError(f"unknown {where} type {kind!r}; choose one of {', '.join(registry)}")
    return kind, from_dict(registry[kind], spec, f"{where} ({kind})")


# The unified model's top-level parts, the units that training freezes and that a change of
# config may rebuild (UnifiedModel.from_pretrained's `fresh`).
MODEL_PARTS = ("encoder", "projector", "backbone", "image_tokenizer", "gen_head")

# The family a section without `type` belongs to (the defaults of their config readers).
_DEFAULT_TYPES = {"projector": "mlp", "image_tokenizer": "vq", "quantizer": "vq"}


def merge_config(base: dict, over: dict) -> dict:
    """Deep merge, except that a mapping replaces the base's when it names another `type`
    than the base names (a projector or quantizer of another family) or a `checkpoint`
    (an image tokenizer whose config comes from the checkpoint)."""
    out = dict(base)
    for k, v in over.items():
        b = out.get(k)
        if not (isinstance(b, dict) and isinstance(v, dict)):
            out[k] = v
            continue
        other_kind = "type" in v and v["type"] != b.get("type", _DEFAULT_TYPES.get(k))
        out[k] = v if other_kind or "checkpoint" in v else merge_config(b, v)
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply command-line `dotted.key=value` overrides; values are parsed as YAML (numbers, lists, null)."""
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data

"""Sampling options with one owner: each generation family's options dataclass.

A field's `metadata` (made by `option(...)`) says its type, its valid range or
choices and a line of help; the dataclass checks every value when built, so
the pipeline, the CLI and the app never repeat a default or a bound. Values
come, in this order, from the call, from the model's shipped `config.sampling`
(when it sets one), or from the field's default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def option(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           choices: tuple | None = None, help: str = "", ui_step: float | None = None,
           ui_max: float | None = None):
    """A sampling option's field. `low`/`high` bound it (inclusive; `low_open`: strictly above
    `low`); `ui_max` caps the app's slider where the option itself has no upper bound."""
    return field(default=default, metadata={"low": low, "high": high, "low_open": low_open, "choices": choices,
                                            "help": help, "ui_step": ui_step, "ui_max": ui_max})


def _kind(f: dataclasses.Field) -> type:
    return {"float": float, "int": int, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]


def check_value(name: str, value: Any, kind: type, meta: dict) -> Any:
    """`value` as `kind`, or a ValueError naming `name` and what is wrong with it."""
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or (
            kind is int and not float(value).is_integer()):
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    elif not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    else:
        value = kind(value)
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        bound = f"> {low}" if meta.get("low_open") else f">= {low}"
        if high is not None:
            bound = f"in {'(' if meta.get('low_open') else '['}{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be in {'(' if meta.get('low_open') else '['}{low}, {high}], got {value}")
    return value


@dataclass
class SampleOptions:
    """Options every family takes; a family's own dataclass adds its fields."""

    guidance_scale: float = option(5.0, low=0, ui_max=20.0, ui_step=0.5,
                                   help="classifier-free guidance weight: how closely images follow the prompt "
                                        "(1 = no guidance)")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, getattr(self, f.name), _kind(f), f.metadata))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def default(cls, name: str, shipped=None) -> Any:
        """What an unset option becomes: the model's shipped value if it sets one, else the field default."""
        value = getattr(shipped, name, None) if shipped is not None else None
        return next(f.default for f in dataclasses.fields(cls) if f.name == name) if value is None else value

    @classmethod
    def spec(cls, name: str) -> dict:
        """Type, bounds, choices and help of one option (for a slider or a flag)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return {"type": _kind(f), **f.metadata}

    @classmethod
    def resolve(cls, given: dict[str, Any], shipped, paradigm: str) -> "SampleOptions":
        """Options for one call: `given` (None = unset) over the model's shipped defaults.

        An option set in `given` that this family does not take is an error naming it.
        """
        foreign = sorted(k for k, v in given.items() if v is not None and k not in cls.names())
        if foreign:
            raise ValueError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to the "
                             f"{paradigm} paradigm; its options: {', '.join(cls.names())}")
        return cls(**{n: given[n] if given.get(n) is not None else cls.default(n, shipped) for n in cls.names()})

    def as_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def draws_alike(self) -> bool:
        """Whether every row with the same prompt comes out the same (greedy decoding): best-of-N
        then draws once."""
        return False


@dataclass
class TokenSamplingOptions(SampleOptions):
    """Families that sample discrete tokens from logits."""

    temperature: float = option(1.0, low=0, ui_max=2.0, ui_step=0.05, help="0 = greedy")
    top_k: int = option(0, low=0, help="keep the k most likely tokens (0 = off)")
    top_p: float = option(1.0, low=0, low_open=True, high=1, help="nucleus sampling mass (1 = off)")

    @property
    def draws_alike(self) -> bool:
        return self.temperature == 0

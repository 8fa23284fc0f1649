"""Projectors: one interface, (B, N, D_enc) -> (B, M, D_llm), chosen by `type`.

Each projector family has a small config dataclass; the unified config holds
`{"type": name, **fields}` and `build_projector` validates the fields against
that family's dataclass.
"""
from __future__ import annotations

from ..config import to_dict, typed_from_dict
from .base import Projector
from .linear import LinearProjector, LinearProjectorConfig
from .mlp import MLPProjector, MLPProjectorConfig
from .perceiver import PerceiverProjector, PerceiverProjectorConfig
from .pixel_shuffle import PixelShuffleProjector, PixelShuffleProjectorConfig
from .qformer import QFormerProjector, QFormerProjectorConfig

PROJECTORS: dict[str, tuple[type, type[Projector]]] = {
    "linear": (LinearProjectorConfig, LinearProjector),
    "mlp": (MLPProjectorConfig, MLPProjector),
    "pixel_shuffle": (PixelShuffleProjectorConfig, PixelShuffleProjector),
    "qformer": (QFormerProjectorConfig, QFormerProjector),
    "perceiver": (PerceiverProjectorConfig, PerceiverProjector),
}


def projector_config(spec: dict):
    return typed_from_dict({k: v[0] for k, v in PROJECTORS.items()}, spec, "mlp", "projector")


def normalise_projector_spec(spec: dict) -> dict:
    """Fill a projector spec with its defaults (what gets written to config.json)."""
    kind, cfg = projector_config(spec)
    return {"type": kind, **to_dict(cfg)}


def build_projector(spec: dict, in_dim: int, out_dim: int, num_input_tokens: int) -> Projector:
    kind, cfg = projector_config(spec)
    return PROJECTORS[kind][1](cfg, in_dim, out_dim, num_input_tokens)


__all__ = ["PROJECTORS", "Projector", "build_projector", "normalise_projector_spec"]

"""Shared building blocks of the parts (projectors, generation heads, ...): activations and MLPs."""
from __future__ import annotations

from torch import nn


def check_activation(name: str) -> str:
    """`name` if transformers' ACT2FN knows it ("gelu", "gelu_pytorch_tanh", "silu", ...), else a clear error."""
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(sorted(ACT2FN))}")
    return name


def activation(name: str = "gelu") -> nn.Module:
    """An activation module by its transformers name. "gelu" is the exact (erf) GELU."""
    if name == "gelu":
        return nn.GELU()  # what every unimm MLP used before activations were configurable
    from transformers.activations import ACT2FN

    return ACT2FN[check_activation(name)]


def mlp(in_dim: int, out_dim: int, depth: int, act: str = "gelu") -> nn.Sequential:
    """Linear, then (activation, Linear) x (depth - 1): the LLaVA-1.5 / Janus aligner shape.

    Parameters sit at even indices (0, 2, 4, ...); activations have none.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [activation(act), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Maps encoder features (B, N, D_enc) to backbone embeddings (B, M, D_llm)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def mlp(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """Linear, then (GELU, Linear) x (depth - 1): the LLaVA-1.5 / Janus aligner shape."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)

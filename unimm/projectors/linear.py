from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Projector


@dataclass
class LinearProjectorConfig:
    pass  # a single Linear(D_enc, D_llm), as in LLaVA-1.0 and JanusFlow


class LinearProjector(Projector):
    def __init__(self, config: LinearProjectorConfig, in_dim: int, out_dim: int, num_input_tokens: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features):
        return self.proj(features)  # (B, N, D_llm)

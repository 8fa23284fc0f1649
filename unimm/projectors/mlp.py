from __future__ import annotations

from dataclasses import dataclass

from ..layers import check_activation, mlp
from .base import Projector


@dataclass
class MLPProjectorConfig:
    depth: int = 2  # 2 = LLaVA-1.5's mlp2x_gelu and Janus's aligner
    # Between the layers; a transformers activation name. Janus's aligner uses its
    # vision tower's `hidden_act` ("gelu", the exact erf GELU, in Janus-Pro).
    activation: str = "gelu"

    def __post_init__(self):
        if self.depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {self.depth}")
        check_activation(self.activation)


class MLPProjector(Projector):
    def __init__(self, config: MLPProjectorConfig, in_dim: int, out_dim: int, num_input_tokens: int):
        super().__init__()
        self.mlp = mlp(in_dim, out_dim, config.depth, config.activation)

    def forward(self, features):
        return self.mlp(features)  # (B, N, D_llm)

"""Pixel-shuffle + MLP (InternVL): merge s x s neighbouring patches into one token.

With scale 2 a 24x24 grid becomes 12x12, four times fewer tokens, each carrying
4 * D_enc channels; a LayerNorm + 2-layer MLP maps them to the backbone width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import mlp
from .base import Projector


@dataclass
class PixelShuffleProjectorConfig:
    scale: int = 2  # side of the merged neighbourhood; tokens shrink by scale**2
    # A learned embedding per output token, added after the MLP: each image token then says
    # where in the grid it sits, instead of the backbone inferring it from token order under
    # RoPE (the default model's "Where is ...?" answers sat at chance without it: BENCHMARKS.md).
    # Ties the projector to its encoder's grid: a different token count is refused.
    position_embedding: bool = False

    def __post_init__(self):
        if self.scale < 1:
            raise ValueError(f"pixel_shuffle scale must be >= 1, got {self.scale}")


class PixelShuffleProjector(Projector):
    def __init__(self, config: PixelShuffleProjectorConfig, in_dim: int, out_dim: int, num_input_tokens: int):
        super().__init__()
        self.scale = config.scale
        merged = in_dim * config.scale**2
        self.norm = nn.LayerNorm(merged)
        self.mlp = mlp(merged, out_dim, depth=2)
        self.position = None
        if config.position_embedding:  # zeros: a model starts as it would without it
            self.position = nn.Parameter(torch.zeros(self.num_output_tokens(num_input_tokens), out_dim))

    def _grid(self, n: int) -> int:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"pixel_shuffle projector needs a square patch grid, got {n} tokens")
        return side

    def num_output_tokens(self, num_input_tokens: int) -> int:
        side = math.ceil(self._grid(num_input_tokens) / self.scale)
        return side * side

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, N, D = features.shape
        side, s = self._grid(N), self.scale
        x = features.transpose(1, 2).reshape(B, D, side, side)  # (B, D, S, S)
        pad = (-side) % s  # odd grids are padded at the bottom/right edge
        if pad:
            x = F.pad(x, (0, pad, 0, pad))
        x = F.pixel_unshuffle(x, s)  # (B, D*s*s, S/s, S/s)
        x = x.flatten(2).transpose(1, 2)  # (B, M, D*s*s)
        x = self.mlp(self.norm(x))  # (B, M, D_llm)
        if self.position is not None:
            if x.shape[1] != self.position.shape[0]:
                raise ValueError(f"pixel_shuffle position_embedding was built for {self.position.shape[0]} tokens, "
                                 f"got {x.shape[1]} (from {N} encoder tokens): the encoder's grid changed")
            x = x + self.position
        return x

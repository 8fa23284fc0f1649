"""Perceiver resampler (Flamingo, arXiv:2204.14198).

M learned latents attend to the concatenation [image features; latents]
(keys and values from both, queries from the latents), followed by an MLP;
unlike the Q-Former there is no separate self-attention block.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Projector


@dataclass
class PerceiverProjectorConfig:
    num_latents: int = 64  # Flamingo uses 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_lat = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lat = self.norm_lat(latents)
        kv = torch.cat([self.norm_x(x), lat], dim=1)  # (B, N + M, D)
        latents = latents + self.attn(lat, kv, kv, need_weights=False)[0]
        return latents + self.mlp(self.norm_mlp(latents))


class PerceiverProjector(Projector):
    def __init__(self, config: PerceiverProjectorConfig, in_dim: int, out_dim: int, num_input_tokens: int):
        super().__init__()
        if in_dim % config.num_heads:
            raise ValueError(f"perceiver encoder width {in_dim} is not divisible by num_heads {config.num_heads}")
        self.num_latents = config.num_latents
        self.latents = nn.Parameter(torch.randn(config.num_latents, in_dim) * 0.02)
        self.layers = nn.ModuleList(
            _PerceiverLayer(in_dim, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_latents

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lat = self.latents.unsqueeze(0).expand(features.shape[0], -1, -1)  # (B, M, D_enc)
        for layer in self.layers:
            lat = layer(lat, features)
        return self.proj(self.norm(lat))  # (B, M, D_llm)

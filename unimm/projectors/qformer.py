"""Learnable queries with cross-attention (BLIP-2's Q-Former, arXiv:2301.12597).

A fixed set of M query vectors is refined by layers of self-attention among
the queries, cross-attention into the image features and an MLP, so the
backbone always sees M tokens whatever the image resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import Projector


@dataclass
class QFormerProjectorConfig:
    num_queries: int = 32  # BLIP-2 uses 32
    num_layers: int = 2
    hidden_size: int | None = None  # query width; None: the encoder width
    num_heads: int = 4
    mlp_ratio: float = 4.0


class _QFormerLayer(nn.Module):
    def __init__(self, dim: int, kv_dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, q: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        h = self.norm1(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        q = q + self.cross_attn(self.norm2(q), feats, feats, need_weights=False)[0]
        return q + self.mlp(self.norm3(q))


class QFormerProjector(Projector):
    def __init__(self, config: QFormerProjectorConfig, in_dim: int, out_dim: int, num_input_tokens: int):
        super().__init__()
        dim = config.hidden_size or in_dim
        if dim % config.num_heads:
            raise ValueError(f"qformer hidden_size {dim} is not divisible by num_heads {config.num_heads}")
        self.num_queries = config.num_queries
        # Small init as in BLIP-2 (std 0.02) keeps the first cross-attention soft.
        self.queries = nn.Parameter(torch.randn(config.num_queries, dim) * 0.02)
        self.feat_norm = nn.LayerNorm(in_dim)
        self.layers = nn.ModuleList(
            _QFormerLayer(dim, in_dim, config.num_heads, config.mlp_ratio) for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        feats = self.feat_norm(features)  # (B, N, D_enc)
        q = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)  # (B, M, D_q)
        for layer in self.layers:
            q = layer(q, feats)
        return self.proj(self.norm(q))  # (B, M, D_llm)

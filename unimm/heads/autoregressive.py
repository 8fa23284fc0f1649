"""Autoregressive image head (Janus / LlamaGen): codebook ids in, codebook logits out.

Generation is decoupled from understanding as in Janus: image tokens enter the
backbone through their own embedding + aligner and leave through their own
head, so the understanding encoder never has to serve generation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import activation, mlp
from .config import GenerationConfig


class ARImageHead(nn.Module):
    def __init__(self, config: GenerationConfig, num_codes: int, code_dim: int, hidden_size: int,
                 num_tokens: int | None = None):
        super().__init__()
        embed_dim = config.embed_dim or code_dim
        head_hidden = config.head_hidden or hidden_size
        self.embedding = nn.Embedding(num_codes, embed_dim)
        self.aligner = mlp(embed_dim, hidden_size, config.aligner_depth, config.activation)
        self.head = nn.Sequential(nn.Linear(hidden_size, head_hidden), activation(config.activation),
                                  nn.Linear(head_hidden, num_codes))
        # generation.position_embedding: one learned vector per image-token position, zeros at first
        self.position = nn.Parameter(torch.zeros(num_tokens, hidden_size)) if config.position_embedding else None

    def embed(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """(B, T) ids of image tokens start, start + 1, ... -> (B, T, D); `start` an int or a (1,) tensor."""
        x = self.aligner(self.embedding(ids))
        if self.position is None:
            return x
        index = torch.arange(ids.shape[1], device=ids.device) + start
        return x + self.position.index_select(0, index).to(x.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # (B, T, D) -> (B, T, K)

    def loss(self, hidden: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Next-token loss: hidden (B, N, D) at the positions that predict target_ids (B, N)."""
        return self.token_nll(hidden, target_ids).mean()

    def token_nll(self, hidden: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) cross-entropy of each target id: hidden (B, N, D) at the positions that predict them."""
        logits = self.logits(hidden)
        return F.cross_entropy(logits.flatten(0, 1).float(), target_ids.flatten().long(),
                               reduction="none").view(target_ids.shape)

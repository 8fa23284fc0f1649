"""Masked image head (MaskGIT arXiv:2202.04200, Show-o arXiv:2408.12528).

Image tokens are embedded with one extra id, the mask token; the backbone sees
them bidirectionally and the head predicts the codebook id at every masked
position from that position's own hidden state (not the previous one's).

The mask token's vector is a parameter of its own beside the codebook's embedding
table, so the head's other weights have the names and shapes of the autoregressive
head's: a masked model can start from a trained autoregressive one
(`init_changes: {generation: {paradigm: masked}}`), only the mask vector new.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import activation, mlp
from .config import GenerationConfig


def cosine_mask_ratio(progress: torch.Tensor | float):
    """MaskGIT's cosine schedule: the fraction of tokens still masked at progress in [0, 1]."""
    if isinstance(progress, torch.Tensor):
        return torch.cos(progress * math.pi / 2)
    return math.cos(progress * math.pi / 2)


class MaskedImageHead(nn.Module):
    def __init__(self, config: GenerationConfig, num_codes: int, code_dim: int, hidden_size: int):
        super().__init__()
        embed_dim = config.embed_dim or code_dim
        head_hidden = config.head_hidden or hidden_size
        self.num_codes = num_codes
        self.mask_id = num_codes  # the extra id, embedded by mask_embedding
        self.embedding = nn.Embedding(num_codes, embed_dim)
        self.mask_embedding = nn.Parameter(torch.randn(embed_dim))  # drawn as nn.Embedding draws its rows
        self.aligner = mlp(embed_dim, hidden_size, config.aligner_depth, config.activation)
        self.head = nn.Sequential(nn.Linear(hidden_size, head_hidden), activation(config.activation),
                                  nn.Linear(head_hidden, num_codes))
        self._register_load_state_dict_pre_hook(self._split_mask_row)

    def _split_mask_row(self, state, prefix, *args):
        """Checkpoints from before the split kept the mask vector as the table's last row."""
        table = state.get(prefix + "embedding.weight")
        if table is not None and prefix + "mask_embedding" not in state and table.shape[0] == self.num_codes + 1:
            state[prefix + "embedding.weight"], state[prefix + "mask_embedding"] = table[:-1], table[-1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, N) codebook ids or mask_id -> (B, N, D)."""
        is_mask = ids == self.mask_id
        x = self.embedding(ids.masked_fill(is_mask, 0))
        return self.aligner(torch.where(is_mask[..., None], self.mask_embedding.to(x.dtype), x))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # (B, N, D) -> (B, N, K)

    def mask(self, ids: torch.Tensor, generator: torch.Generator | None = None):
        """Training corruption: mask a cosine-scheduled random fraction of each row.

        Returns (masked ids, bool mask of the masked positions); at least one
        token per row is masked so every row contributes to the loss.
        """
        B, N = ids.shape
        u = torch.rand(B, device=ids.device, generator=generator)
        n_masked = (cosine_mask_ratio(u) * N).ceil().clamp(1, N)  # (B,)
        scores = torch.rand(B, N, device=ids.device, generator=generator)
        ranks = scores.argsort(-1).argsort(-1)  # a random permutation per row
        masked = ranks < n_masked[:, None]
        return torch.where(masked, torch.full_like(ids, self.mask_id), ids), masked

    def loss(self, hidden: torch.Tensor, target_ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the masked positions only."""
        logits = self.logits(hidden[masked])  # (n_masked, K)
        return F.cross_entropy(logits.float(), target_ids[masked])

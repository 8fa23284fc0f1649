from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Maps encoder features (B, N, D_enc) to backbone embeddings (B, M, D_llm)."""

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

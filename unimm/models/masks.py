"""Prepared 4-D attention masks.

transformers takes a 4-D mask as given, so building one per run (instead of
letting the model rebuild it from a 2-D padding mask at every decoding step)
keeps the decode step's shapes and work constant. The same helper is where
non-causal patterns (bidirectional image spans) plug in.
"""
from __future__ import annotations

import torch


def causal_padding_mask(key_mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, S) key mask (1 = real token, 0 = left padding) -> (B, 1, S, S) mask over all S positions.

    Query i sees key j when j <= i and j is not padding; a padding query sees
    itself only, so no softmax row is empty. Boolean for SDPA (True = attend),
    additive (0 / most negative) for eager attention. None where the attention
    implementation does not take 4-D masks (flash attention): the caller then
    passes the 2-D mask.
    """
    if attn_implementation not in ("sdpa", "eager"):
        return None
    S = key_mask.shape[1]
    idx = torch.arange(S, device=key_mask.device)
    causal = idx[None, :] <= idx[:, None]  # (S, S): key j <= query i
    allowed = causal[None] & key_mask.bool()[:, None, :]  # (B, S, S)
    allowed |= torch.eye(S, dtype=torch.bool, device=key_mask.device)[None]
    allowed = allowed[:, None]  # (B, 1, S, S)
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

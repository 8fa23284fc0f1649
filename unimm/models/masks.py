"""Prepared 4-D attention masks.

transformers takes a 4-D mask as given, so building one per run (instead of
letting the model rebuild it from a 2-D padding mask at every decoding step)
keeps the decode step's shapes and work constant, and lets masked and flow
generation use the omni-attention pattern: text causal, image tokens
bidirectional among themselves (Show-o arXiv:2408.12528, Transfusion).
"""
from __future__ import annotations

import torch


# Attention implementations that take a 4-D mask (flash attention takes only a 2-D, causal one).
MASKABLE_ATTENTION = ("sdpa", "eager")


def attention_mask_4d(key_mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype,
                      image_start: int | None = None) -> torch.Tensor | None:
    """(B, S) key mask (1 = real token, 0 = left padding) -> (B, 1, S, S) mask.

    Query i sees key j when j <= i and j is not padding; with `image_start`,
    positions from there to the end also see each other (bidirectional image
    span). A padding query sees itself only, so no softmax row is empty.
    Boolean for SDPA (True = attend), additive (0 / most negative) for eager.
    None where the attention implementation takes no 4-D masks (flash
    attention): the caller then passes the 2-D mask, causal only.
    """
    if attn_implementation not in MASKABLE_ATTENTION:
        if image_start is not None:
            raise ValueError(
                f"bidirectional image attention needs attn_implementation 'sdpa' or 'eager', not {attn_implementation!r}"
            )
        return None
    S = key_mask.shape[1]
    idx = torch.arange(S, device=key_mask.device)
    allowed = idx[None, :] <= idx[:, None]  # (S, S): causal, key j <= query i
    if image_start is not None:
        span = idx >= image_start
        allowed = allowed | (span[:, None] & span[None, :])
    allowed = allowed[None] & key_mask.bool()[:, None, :]  # (B, S, S)
    allowed = allowed | torch.eye(S, dtype=torch.bool, device=key_mask.device)[None]
    allowed = allowed[:, None]  # (B, 1, S, S)
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

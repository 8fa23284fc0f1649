"""Classifier-free guidance with conditional and unconditional rows in one batch.

Rows [0, B) carry the prompts, rows [B, 2B) the same prompts with every token but
BOS and BOI replaced by pad (Janus). Guided output = uncond + s * (cond - uncond);
s = 1 needs no unconditional rows at all.
"""
from __future__ import annotations

import torch


def with_unconditional(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, guidance_scale: float):
    """(B, L) prompts -> (rows, L) ids and mask, and whether guidance is on (rows = 2B if so)."""
    if guidance_scale == 1.0:
        return prompt_ids, prompt_mask, False
    ids = torch.cat([prompt_ids, model.unconditional_ids(prompt_ids)])
    return ids, torch.cat([prompt_mask, prompt_mask]), True


def guide(out: torch.Tensor, batch: int, guidance_scale: float) -> torch.Tensor:
    """(2B, ...) conditional-then-unconditional outputs -> (B, ...) guided; (B, ...) passes through."""
    if out.shape[0] == batch:
        return out
    cond, uncond = out[:batch], out[batch:]
    return uncond + guidance_scale * (cond - uncond)

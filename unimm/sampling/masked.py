"""Masked (MaskGIT-style) parallel decoding of VQ tokens (arXiv:2202.04200; Show-o).

Start fully masked; at every step predict all masked tokens at once (the head
and the sampler see only the masked positions; the backbone reads them all), keep the
most confident and re-mask the rest, following the cosine schedule so that
after step s a fraction cos(pi/2 * (s+1)/S) stays masked and none after the
last step. Confidence is the sampled token's log-probability plus Gumbel
noise whose weight anneals linearly to zero (MaskGIT's "choice temperature"),
so early steps explore and late steps commit. Tokens, once kept, stay.
"""
from __future__ import annotations

import math

import torch

from ..heads.masked import cosine_mask_ratio
from ..models.unified import UnifiedModel
from .cfg import guide
from .logits import sample_next
from .span import ImageSpanDecoder


@torch.inference_mode()
def generate_masked_tokens(model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                           steps: int = 12, guidance_scale: float = 5.0, temperature: float = 1.0,
                           top_k: int = 0, top_p: float = 1.0, choice_temperature: float = 4.5,
                           generator: torch.Generator | None = None, progress=None,
                           cache_prompt: bool = True) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> image token ids (B, N) in `steps` passes.

    temperature 0 decodes greedily (argmax tokens, no confidence noise).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    head = model.gen_head
    span = ImageSpanDecoder(model, prompt_ids, prompt_mask, guidance_scale, cache_prompt)
    B, N = prompt_ids.shape[0], model.num_image_tokens
    ids = torch.full((B, N), head.mask_id, dtype=torch.long, device=prompt_ids.device)
    unknown = torch.ones(B, N, dtype=torch.bool, device=prompt_ids.device)
    for s in range(steps):
        h = span.hidden(head.embed(ids))  # (rows, N, D): every position is read ...
        rows = h.shape[0] // B
        pick = unknown.repeat(rows, 1)  # ... but only the masked ones are predicted and sampled
        logits = guide(head.logits(h[pick]).float(), int(unknown.sum()), span.guidance_scale)  # (M, K)
        drawn = sample_next(logits, temperature, top_k, top_p, generator)  # (M,)
        sampled = ids.masked_scatter(unknown, drawn)
        keep_masked = math.floor(N * cosine_mask_ratio((s + 1) / steps))  # 0 after the last step
        if keep_masked == 0:
            ids = sampled
        else:
            picked = torch.log_softmax(logits, -1).gather(-1, drawn[:, None]).squeeze(-1)  # (M,)
            anneal = choice_temperature * (1 - (s + 1) / steps)
            if temperature > 0 and anneal > 0:
                u = torch.rand(picked.shape, device=picked.device, generator=generator).clamp_(1e-20, 1)
                picked = picked + anneal * -torch.log(-torch.log(u))  # Gumbel noise
            # Kept tokens are never re-masked.
            conf = torch.full((B, N), float("inf"), device=picked.device).masked_scatter(unknown, picked)
            ranks = conf.argsort(-1).argsort(-1)  # 0 = least confident
            unknown = ranks < keep_masked
            ids = torch.where(unknown, torch.full_like(sampled, head.mask_id), sampled)
        if progress is not None:
            progress(s + 1, steps)
    return ids

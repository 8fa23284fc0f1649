"""Decoding a bidirectional image span against a cached prompt (masked and flow sampling).

The prompt is causal and never attends to the image span, so its keys and
values are the same at every denoising step: prefill it once, then each step
runs only the N span tokens against the cached prompt and drops their keys
and values again (`crop(-N)`, which means "remove N" in transformers 4.x and
5.x alike). Show-o reruns the whole sequence every step; BAGEL reuses the
context cache the same way as here. CFG rows: [0, B) conditional, [B, 2B)
unconditional.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from ..models.unified import UnifiedModel, positions
from .cfg import guide, with_unconditional


class ImageSpanDecoder:
    """`cache_prompt=False` recomputes prompt + span every step, as Show-o does (for comparison)."""

    def __init__(self, model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 guidance_scale: float, cache_prompt: bool = True):
        self.model = model
        self.cache_prompt = cache_prompt
        self.batch, L = prompt_ids.shape
        N = model.num_image_tokens
        self.guidance_scale = guidance_scale
        prompt_ids, prompt_mask, self.cfg = with_unconditional(model, prompt_ids, prompt_mask, guidance_scale)
        self.n = N
        if not cache_prompt:
            self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
            return
        self.cache = DynamicCache(config=model.backbone.hf_config)
        mask = model.image_span_mask(prompt_mask, N)  # (rows, 1, L + N, L + N)
        pos = positions(model.span_key_mask(prompt_mask, N))  # (rows, L + N)
        device = prompt_ids.device
        model.hidden_states(model.backbone.embed(prompt_ids), attention_mask=mask[:, :, :L, :L], position_ids=pos[:, :L],
                            cache=self.cache, cache_position=torch.arange(L, device=device))
        self.span_mask, self.span_pos = mask[:, :, L:], pos[:, L:]
        self.span_cache_pos = torch.arange(L, L + N, device=device)

    def hidden(self, span_embeds: torch.Tensor) -> torch.Tensor:
        """(B, N, D) span embeddings (shared by both CFG halves) -> (rows, N, D) hidden states."""
        if self.cfg:
            span_embeds = torch.cat([span_embeds, span_embeds])
        if not self.cache_prompt:
            return self.model.image_span_hidden(self.prompt_ids, self.prompt_mask, span_embeds)
        h = self.model.hidden_states(span_embeds, attention_mask=self.span_mask, position_ids=self.span_pos,
                                     cache=self.cache, cache_position=self.span_cache_pos)
        self.cache.crop(-self.n)  # back to the prompt alone for the next step
        return h

    def guide(self, out: torch.Tensor) -> torch.Tensor:
        """(rows, ...) -> (B, ...)."""
        return guide(out, self.batch, self.guidance_scale)

"""Autoregressive text-to-image sampling over VQ tokens, gpt-fast style.

- One preallocated (static) KV cache sized for prompt + image tokens, so
  shapes never change from step to step.
- Classifier-free guidance with conditional and unconditional rows in one
  batch (cfg.py), on the logits.
- Only the last position's hidden state goes through the image head.
"""
from __future__ import annotations

import torch
from transformers import StaticCache

from ..models.masks import attention_mask_4d
from ..models.unified import UnifiedModel, positions
from .cfg import guide, with_unconditional
from .logits import sample_next


@torch.inference_mode()
def generate_image_tokens(model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          guidance_scale: float = 5.0, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0, generator: torch.Generator | None = None,
                          progress=None) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> image token ids (B, N).

    `progress`, if given, is called with (step, total) after every token.
    """
    B, L = prompt_ids.shape
    N = model.num_image_tokens
    prompt_ids, prompt_mask, cfg = with_unconditional(model, prompt_ids, prompt_mask, guidance_scale)  # (rows, L)
    cache = StaticCache(config=model.backbone.hf_config, max_cache_len=L + N)
    # One mask for the whole run (prompt + image positions), sliced per step: the
    # decode step's shapes never change and nothing is rebuilt inside the loop.
    key_mask = model.span_key_mask(prompt_mask, N)  # (rows, L + N)
    mask4d = attention_mask_4d(key_mask, model.backbone.hf_config._attn_implementation, model.dtype)
    pos = positions(prompt_mask)  # (rows, L)
    embeds = model.backbone.embed(prompt_ids)  # (rows, L, D)
    cache_pos = torch.arange(L, device=prompt_ids.device)
    out = torch.empty(B, N, dtype=torch.long, device=prompt_ids.device)
    seen = L  # positions in the cache after this step (a Python int: no host sync)
    for i in range(N):
        step_mask = key_mask[:, :seen] if mask4d is None else mask4d[:, :, seen - embeds.shape[1]:seen]
        h = model.hidden_states(embeds, attention_mask=step_mask, position_ids=pos,
                                cache=cache, cache_position=cache_pos)
        logits = guide(model.image_logits(h[:, -1]).float(), B, guidance_scale)  # (B, K)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        out[:, i] = nxt
        if progress is not None:
            progress(i + 1, N)
        if i == N - 1:
            break
        embeds = model.embed_image_tokens((torch.cat([nxt, nxt]) if cfg else nxt)[:, None])  # (rows, 1, D)
        pos = pos[:, -1:] + 1
        cache_pos = cache_pos[-1:] + 1
        seen += 1
    return out

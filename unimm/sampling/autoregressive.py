"""Autoregressive text-to-image sampling over VQ tokens, gpt-fast style.

- One preallocated (static) KV cache sized for prompt + image tokens, so
  shapes never change from step to step.
- Classifier-free guidance with conditional and unconditional rows in one
  batch (cfg.py), on the logits.
- Only the last position's hidden state goes through the image head.
- The decode step is a plain function of fixed-shape tensors (`decode_step`);
  `compile=True` runs it through `torch.compile` and samples by the
  exponential race (`sample_with_noise`), so a step needs no host
  synchronisation. Greedy ids are the same either way; seeded samples differ
  from the eager path's (another use of the random stream), and are
  reproducible for a seed.
"""
from __future__ import annotations

import functools

import torch
from transformers import StaticCache

from ..models.masks import attention_mask_4d
from ..models.unified import UnifiedModel, positions
from .cfg import guide, with_unconditional
from .logits import sample_next, sample_with_noise


def next_token(model: UnifiedModel, embeds: torch.Tensor, attention_mask, pos: torch.Tensor, cache_pos: torch.Tensor,
               cache, batch: int, guidance_scale: float, temperature: float, top_k: int, top_p: float,
               noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Run `embeds` (rows, T, D) through the cached backbone and pick the next image token (batch,).

    With `noise` (batch, K) of Exp(1) draws the pick is the exponential race (no host
    synchronisation); without, torch.multinomial with `generator`.
    """
    h = model.hidden_states(embeds, attention_mask=attention_mask, position_ids=pos, cache=cache,
                            cache_position=cache_pos)
    logits = guide(model.image_logits(h[:, -1]).float(), batch, guidance_scale)  # (batch, K)
    if noise is not None or temperature <= 0:
        return sample_with_noise(logits, noise, temperature, top_k, top_p)
    return sample_next(logits, temperature, top_k, top_p, generator)


def decode_step(model: UnifiedModel, tokens: torch.Tensor, attention_mask, pos: torch.Tensor,
                cache_pos: torch.Tensor, cache, batch: int, guidance_scale: float, temperature: float, top_k: int,
                top_p: float, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, index: torch.Tensor | int = 0) -> torch.Tensor:
    """The previous image token (batch,), image token `index` ((1,) tensor), -> the next (batch,);
    every tensor keeps its shape from step to step."""
    rows = tokens if pos.shape[0] == batch else torch.cat([tokens, tokens])  # CFG: the same token in both halves
    embeds = model.embed_image_tokens(rows[:, None], index)  # (rows, 1, D)
    return next_token(model, embeds, attention_mask, pos, cache_pos, cache, batch, guidance_scale, temperature,
                      top_k, top_p, noise, generator)


@functools.cache
def compiled_decode_step():
    """decode_step wrapped in torch.compile (built once; recompiled per model and shape by dynamo's guards)."""
    return torch.compile(decode_step, dynamic=False)


@torch.inference_mode()
def generate_image_tokens(model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          guidance_scale: float = 5.0, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0, generator: torch.Generator | None = None,
                          progress=None, compile: bool = False) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> image token ids (B, N).

    `progress`, if given, is called with (step, total) after every token.
    `compile=True` runs the decode step compiled (see the module docstring).
    """
    B, L = prompt_ids.shape
    N = model.num_image_tokens
    prompt_ids, prompt_mask, _ = with_unconditional(model, prompt_ids, prompt_mask, guidance_scale)  # (rows, L)
    cache = StaticCache(config=model.backbone.hf_config, max_cache_len=L + N)
    # One mask for the whole run (prompt + image positions); each step selects its rows,
    # so the decode step's shapes never change and nothing is rebuilt inside the loop.
    key_mask = model.span_key_mask(prompt_mask, N)  # (rows, L + N)
    mask4d = attention_mask_4d(key_mask, model.backbone.hf_config._attn_implementation, model.dtype)
    if compile and mask4d is None:
        raise ValueError(f"compile needs a backbone with attn_implementation 'sdpa' or 'eager', not "
                         f"{model.backbone.hf_config._attn_implementation!r}")
    step = compiled_decode_step() if compile else decode_step
    K = model.image_tokenizer.num_codes

    def noise():  # the exponential race's draws for one step, on the device: no host synchronisation
        if not compile or temperature <= 0:
            return None
        return torch.empty(B, K, device=prompt_ids.device).exponential_(generator=generator)

    seen = L  # positions in the cache after the step (a Python int: no host sync)

    def mask(cache_pos: torch.Tensor):
        if mask4d is None:  # flash attention takes the 2-D key mask up to the current position
            return key_mask[:, :seen]
        return mask4d.index_select(2, cache_pos)

    pos, cache_pos = positions(prompt_mask), torch.arange(L, device=prompt_ids.device)
    nxt = next_token(model, model.backbone.embed(prompt_ids), mask(cache_pos), pos, cache_pos, cache, B,
                     guidance_scale, temperature, top_k, top_p, noise(), generator)  # the prefill, eager
    out = torch.empty(B, N, dtype=torch.long, device=prompt_ids.device)
    out[:, 0] = nxt
    pos, cache_pos = pos[:, -1:], cache_pos[-1:]
    for i in range(1, N):
        if progress is not None:
            progress(i, N)
        pos, cache_pos, seen = pos + 1, cache_pos + 1, seen + 1
        nxt = step(model, nxt, mask(cache_pos), pos, cache_pos, cache, B, guidance_scale, temperature, top_k,
                   top_p, noise(), generator, cache_pos - L)  # the token fed is image token i - 1
        out[:, i] = nxt
    if progress is not None:
        progress(N, N)
    return out

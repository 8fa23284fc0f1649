"""Text generation with a KV cache (chat answers), one token id per step.

The prompt (with image features spliced in) is prefilled once; each further
step feeds one token and reuses the cache. Rows stop at end-of-sequence.
A cache that already holds the first `past_length` tokens of the prompt (an
earlier turn of the same conversation, see prefix_cache.py) can be passed in:
then `input_ids` are only the tokens after them.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import DynamicCache

from ..models.unified import UnifiedModel, positions
from .logits import sample_next


@torch.inference_mode()
def generate_text(model: UnifiedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  pixel_values: torch.Tensor | None = None, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, cache: DynamicCache | None = None,
                  past_length: int = 0) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) step by step until every row has emitted EOS.

    Rows that finished keep yielding EOS so the caller can stack steps. With
    `cache` holding `past_length` earlier tokens (unpadded rows), `input_ids`,
    `attention_mask` and `pixel_values` cover only what follows them; the
    cache is extended in place.
    """
    mask = attention_mask
    padded = not bool(mask.all())  # without padding the model's own causal mask is all that is needed
    if cache is None:
        if past_length:
            raise ValueError(f"past_length {past_length} needs the cache that holds those tokens")
        cache = DynamicCache(config=model.backbone.hf_config)
    elif cache.get_seq_length() != past_length or padded:
        raise ValueError(f"the cache holds {cache.get_seq_length()} tokens, not past_length {past_length} "
                         "(and a reused cache needs unpadded rows)")
    embeds = model.embed_inputs(input_ids, pixel_values)  # (B, T, D)
    with model.seeing(input_ids, pixel_values):  # cross-attention fusion: every step reads the images
        yield from _decode(model, embeds, mask, padded, positions(mask) + past_length, cache, max_new_tokens,
                           temperature, top_k, top_p, generator)


def _decode(model, embeds, mask, padded, pos, cache, max_new_tokens, temperature, top_k, top_p, generator):
    eos = model.token_ids.eos
    done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
    for _ in range(max_new_tokens):
        h = model.hidden_states(embeds, attention_mask=mask if padded else None, position_ids=pos, cache=cache)
        logits = model.text_logits(h[:, -1])  # (B, V)
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        yield nxt
        done |= nxt == eos
        if bool(done.all()):
            return
        embeds = model.backbone.embed(nxt[:, None])  # (B, 1, D)
        if padded:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        pos = pos[:, -1:] + 1

"""Text generation with a KV cache (chat answers), one token id per step.

The prompt (with image features spliced in) is prefilled once; each further
step feeds one token and reuses the cache. Rows stop at end-of-sequence.
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
                  generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) step by step until every row has emitted EOS.

    Rows that finished keep yielding EOS so the caller can stack steps.
    """
    eos = model.token_ids.eos
    cache = DynamicCache(config=model.backbone.hf_config)
    embeds = model.embed_inputs(input_ids, pixel_values)  # (B, T, D)
    mask = attention_mask
    pos = positions(mask)
    padded = not bool(mask.all())  # without padding the model's own causal mask is all that is needed
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
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

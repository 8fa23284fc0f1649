"""Speculative Jacobi decoding of image tokens (SJD, Teng et al. 2024): several tokens per backbone pass.

Plain autoregressive sampling runs the backbone once per token. Here a window
of draft tokens follows the accepted ones and one pass scores them all: the
output at each window position is the distribution of the next token given
the accepted prefix *and the drafts before it*. The drafts are then checked
in order with the speculative-sampling rule: draft d, drawn from q, is kept
with probability min(1, p(d) / q(d)); the first rejected one is replaced by a
draw from max(0, p - q) (normalised) and the rest of the window is redrafted.
Each kept or replacing token is then an exact draw from plain sampling's
distribution, so the images are distributed as the sequential sampler's (the
tests check frequencies), and greedy decoding (keep a draft only if it is the
argmax) gives its ids (up to float rounding: a pass over a window and a pass
over one token may round differently, which can flip an exact near-tie in
half precision). Every pass yields at least one token.

Where the drafts come from (each with the distribution it was drawn from, as
the rule needs):
- positions the last pass scored: a draw from that pass's output there (the
  Jacobi iteration: drafts improve as the tokens before them settle);
- new positions: a copy of the token one image row above, accepted or a
  draft (a spatial prior: neighbouring rows of a picture repeat; ZipAR and
  SJD++ use the same locality; in the first row, the token to the left). A
  copy is fixed before the pass that checks it, so its "distribution" is a
  point mass: it is kept with probability p(d), and a rejection draws from p
  without d, which is again exact.

Rows of a batch (and both halves of classifier-free guidance) advance
together by the smallest number of tokens any row accepted; a row's further
accepted tokens are checked again in the next pass, with fresh randomness,
which keeps the draws exact. The static KV cache is overwritten in place:
entries past the accepted tokens are rewritten by the next pass before any
query may attend to them.
"""
from __future__ import annotations

import math

import torch
from transformers import StaticCache

from ..models.masks import attention_mask_4d
from ..models.unified import UnifiedModel, positions
from .cfg import guide, with_unconditional
from .logits import filtered


def _probs(model, h: torch.Tensor, batch: int, guidance_scale: float, temperature: float, top_k: int,
           top_p: float) -> torch.Tensor:
    """Hidden states (rows, W, D) -> the sampling distribution at each position (batch, W, K)."""
    logits = guide(model.image_logits(h).float(), batch, guidance_scale)  # (batch, W, K)
    if temperature <= 0:
        return logits  # greedy works on the logits' argmax
    return filtered(logits, temperature, top_k, top_p).softmax(-1)


def _draw(p: torch.Tensor, generator) -> torch.Tensor:
    """One draw per row from probabilities (..., K)."""
    flat = p.reshape(-1, p.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(p.shape[:-1])


@torch.inference_mode()
def generate_image_tokens_jacobi(model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                                 guidance_scale: float = 5.0, temperature: float = 1.0, top_k: int = 0,
                                 top_p: float = 1.0, generator: torch.Generator | None = None, progress=None,
                                 window: int = 16, stats: dict | None = None) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> image token ids (B, N), as
    `generate_image_tokens` draws them, in fewer backbone passes. `stats`, if given, gets
    "passes" (backbone passes, the prefill included) and "tokens"."""
    if window < 2:
        raise ValueError(f"jacobi_window must be >= 2, got {window}")
    B, L = prompt_ids.shape
    N = model.num_image_tokens
    device = prompt_ids.device
    greedy = temperature <= 0
    K = model.image_tokenizer.num_codes
    side = math.isqrt(N)
    row = side if side * side == N else None  # tokens per image row, for the spatial prior

    ids, mask, _ = with_unconditional(model, prompt_ids, prompt_mask, guidance_scale)  # (rows, L)
    cache = StaticCache(config=model.backbone.hf_config, max_cache_len=L + N)
    key_mask = model.span_key_mask(mask, N)  # (rows, L + N)
    mask4d = attention_mask_4d(key_mask, model.backbone.hf_config._attn_implementation, model.dtype)
    if mask4d is None:
        raise ValueError("Jacobi decoding needs a backbone with attn_implementation 'sdpa' or 'eager', not "
                         f"{model.backbone.hf_config._attn_implementation!r}")
    pos0 = positions(mask)[:, -1:]  # (rows, 1): the position of BOI

    def run(embeds: torch.Tensor, start: int) -> torch.Tensor:
        """embeds (rows, W, D) at cache slots start.. -> distributions (B, W, K)."""
        _rewind(cache, start)
        W = embeds.shape[1]
        cache_pos = torch.arange(start, start + W, device=device)
        # The prefill's positions skip the left padding, as the sequential sampler's do.
        pos = positions(mask) if start == 0 else pos0 + (cache_pos - (L - 1))[None]
        h = model.hidden_states(embeds, attention_mask=mask4d.index_select(2, cache_pos), position_ids=pos,
                                cache=cache, cache_position=cache_pos)
        return _probs(model, h, B, guidance_scale, temperature, top_k, top_p)

    passes = 1
    p0 = run(model.backbone.embed(ids), 0)[:, -1]  # the prefill: token 0's distribution (B, K)
    out = torch.empty(B, N, dtype=torch.long, device=device)
    out[:, 0] = p0.argmax(-1) if greedy else _draw(p0, generator)
    n = 1  # accepted tokens; out[:, n - 1] is the one not yet in the cache
    drafts = torch.empty(B, 0, dtype=torch.long, device=device)  # for positions n, n + 1, ...
    q = None if greedy else torch.empty(B, 0, K, device=device)  # what each draft was drawn from
    while n < N:
        W = min(window, N - n)  # inputs: the last accepted token and W - 1 drafts -> W distributions
        if drafts.shape[1] < W - 1:  # new positions: the spatial prior, else uniform
            drafts, q = _extend(drafts, q, n, W - 1, out, row, K)
        drafts = drafts[:, :W - 1]
        q = None if greedy else q[:, :W - 1]
        inputs = torch.cat([out[:, n - 1:n], drafts], 1)  # (B, W)
        rows = inputs if ids.shape[0] == B else torch.cat([inputs, inputs])
        p = run(model.embed_image_tokens(rows, n - 1), L + n - 1)  # (B, W, K): p[:, i] is position n + i
        passes += 1
        if greedy:
            best = p.argmax(-1)  # (B, W)
            ok = best[:, :W - 1] == drafts
            tokens = best
        else:
            idx = drafts[..., None]
            ratio = p[:, :W - 1].gather(-1, idx).squeeze(-1) / q.gather(-1, idx).squeeze(-1).clamp_min(1e-30)
            ok = torch.rand(ratio.shape, device=device, generator=generator) < ratio
            residual = (p[:, :W - 1] - q).clamp_min(0)
            total = residual.sum(-1, keepdim=True)
            # p == q leaves no residual; a rejection is then impossible, any row will do.
            residual = torch.where(total > 0, residual / total.clamp_min(1e-30), p[:, :W - 1])
            fix = _draw(residual, generator)  # used only where a draft is rejected
            last = _draw(p[:, -1:], generator)  # the token after the window, if every draft holds
            tokens = torch.cat([torch.where(ok, drafts, fix), last], 1)
        kept = torch.cumprod(ok.long(), 1).sum(1)  # accepted drafts per row, before the first rejection
        k = int(kept.min()) + 1  # tokens every row has: its accepted drafts, then one more
        out[:, n:n + k] = tokens[:, :k]
        # Jacobi: redraft the positions this pass scored past the new tokens from its outputs.
        later = p[:, k:]
        if greedy:
            drafts = later.argmax(-1)
        else:
            drafts, q = (_draw(later, generator), later) if later.shape[1] else (drafts[:, :0], q[:, :0])
        n += k
        if progress is not None:
            progress(min(n, N), N)
    if stats is not None:
        stats.update(passes=passes, tokens=N)
    return out


def _rewind(cache, length: int) -> None:
    """Make the cache's next write land at slot `length`. transformers 5 static caches append at
    their own count of written slots (ignoring cache_position), so the count is moved back past
    the rejected drafts; the slots themselves are overwritten by the next pass."""
    extra = int(cache.get_seq_length()) - length
    if extra > 0:
        cache.crop(-extra)  # a negative count removes that many (the form every version reads)


def _extend(drafts, q, n: int, want: int, out, row, K: int):
    """Drafts for positions n + len(drafts) .. n + want - 1, with what they were drawn from (q None:
    greedy, which needs none): a copy of the token one image row above (in the first row, the one
    to the left), accepted or itself a draft: every earlier position holds one or the other. A
    copy is fixed before the pass that checks it, so its distribution is a point mass, which keeps
    the check exact."""
    for j in range(n + drafts.shape[1], n + want):
        src = j - row if row is not None and j >= row else j - 1
        d = out[:, src] if src < n else drafts[:, src - n]
        drafts = torch.cat([drafts, d[:, None]], 1)
        if q is not None:
            q = torch.cat([q, torch.nn.functional.one_hot(d, K).float()[:, None]], 1)
    return drafts, q

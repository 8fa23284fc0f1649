"""Turning logits into the next token: greedy, temperature, top-k, top-p."""
from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,). temperature <= 0 is greedy (argmax)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filtered(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_with_noise(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0) -> torch.Tensor:
    """sample_next without a host synchronisation, for compiled decode steps.

    `noise` (B, V) holds Exp(1) draws: argmax(p / noise) is a draw from p (the
    exponential race), so the sample is a few tensor ops and the random numbers
    can be drawn for every step up front. temperature <= 0 is greedy (noise unused).
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = filtered(logits, temperature, top_k, top_p).softmax(-1)
    return (probs / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(-1)  # a 0 draw must not make 0/0


def filtered(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits divided by the temperature, with tokens outside top-k / top-p set to -inf."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the top token always stays.
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> tuple[float, int, float]:
    """The three values checked (type, finiteness, range) by their owner, TokenSamplingOptions."""
    from ..generation.options import TokenSamplingOptions, check_value

    values = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    return tuple(check_value(n, v, (spec := TokenSamplingOptions.spec(n))["type"], spec) for n, v in values.items())


def make_generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g

"""Cross-attention fusion (Flamingo, Llama 3.2 Vision, NVLM-X): the image stays out of the sequence.

With `cross_attention: {every: k}` in the model config, an understood image takes a
single marker token in the decoder's input instead of its M projected tokens; the
projected tokens are read instead by gated cross-attention blocks run before every
k-th decoder layer (0, k, 2k, ...) of the transformers causal LM:

    x = x + tanh(a) * CrossAttention(LayerNorm(x), visual)
    x = x + tanh(f) * FeedForward(LayerNorm(x))

with the gates a and f starting at zero, so a pretrained (or frozen) LM starts out
exactly as it was and learns how much to look. Every text token of a row attends to
all of that row's images (as Llama 3.2 Vision's tokens after the first image do);
rows without an image pass through unchanged.

The blocks are run by forward pre-hooks on the LM's own decoder layers, so the LM
keeps its transformers layout (and its checkpoint opens in transformers as it is);
the hooks live only inside `CrossAttentionStack.seeing(...)`, which the unified
model opens around an understanding forward pass or a chat decode. Outside it
(image generation, text-only use) the backbone is the plain LM.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..layers import activation as make_activation
from ..layers import check_activation


@dataclass
class CrossAttentionConfig:
    every: int = 1  # a block before decoder layers 0, every, 2 * every, ...
    heads: int = 0  # attention heads; 0: the backbone's own count
    ffn_mult: int = 4  # the gated feed-forward's hidden width, in multiples of the backbone's
    activation: str = "gelu"

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"cross_attention.every must be >= 1, got {self.every}")
        if self.heads < 0:
            raise ValueError(f"cross_attention.heads must be >= 0 (0: the backbone's), got {self.heads}")
        if self.ffn_mult < 1:
            raise ValueError(f"cross_attention.ffn_mult must be >= 1, got {self.ffn_mult}")
        check_activation(self.activation)


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_mult: int, activation: str):
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention heads ({heads}) must divide the backbone width ({dim})")
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), make_activation(activation),
                                 nn.Linear(dim * ffn_mult, dim))
        self.ffn_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, visual: torch.Tensor, key_mask: torch.Tensor, watch=None,
                seen: list | None = None) -> torch.Tensor:
        """x (B, T, D) text states; visual (B, V, D); key_mask (B, V), True where a visual token is real.
        `watch` (rows (R,), positions (R,)): the attention over the visual tokens of the text state at
        each, averaged over heads, is appended to `seen` as (R, V) (the trainer's grounding loss)."""
        has = key_mask.any(1).to(x.dtype)[:, None, None]  # rows with no image: left exactly as they are
        keys_ok = key_mask | ~key_mask.any(1, keepdim=True)  # (an all-masked row would give NaN)
        if watch is not None:
            rows, positions = watch
            _, w = self.attn(self.norm(x[rows, positions])[:, None], visual[rows], visual[rows],
                             key_padding_mask=~keys_ok[rows], need_weights=True)
            seen.append(w[:, 0])
        a, _ = self.attn(self.norm(x), visual, visual, key_padding_mask=~keys_ok, need_weights=False)
        x = x + has * torch.tanh(self.attn_gate).to(x.dtype) * a
        return x + has * torch.tanh(self.ffn_gate).to(x.dtype) * self.ffn(self.ffn_norm(x))


class CrossAttentionStack(nn.Module):
    """The gated blocks, one per hooked decoder layer (`layer_ids`)."""

    def __init__(self, config: CrossAttentionConfig, dim: int, num_layers: int, default_heads: int):
        super().__init__()
        self.layer_ids = list(range(0, num_layers, config.every))
        heads = config.heads or default_heads
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(dim, heads, config.ffn_mult, config.activation)
                                    for _ in self.layer_ids)

    @contextlib.contextmanager
    def seeing(self, decoder_layers, visual: torch.Tensor, key_mask: torch.Tensor, watch=None):
        """Within: each hooked decoder layer first runs its block over (visual, key_mask). Yields a
        list that gets, with `watch` (rows, positions), each block's attention there (R, V), in
        layer order."""
        seen: list[torch.Tensor] = []

        def hook_for(block):
            def pre_hook(module, args, kwargs):
                if args:
                    return (block(args[0], visual, key_mask, watch, seen), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": block(kwargs["hidden_states"], visual, key_mask, watch, seen)}
            return pre_hook

        hooks = [decoder_layers[i].register_forward_pre_hook(hook_for(b), with_kwargs=True)
                 for i, b in zip(self.layer_ids, self.blocks)]
        try:
            yield seen
        finally:
            for h in hooks:
                h.remove()

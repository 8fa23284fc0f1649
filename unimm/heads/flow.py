"""Flow-matching head on continuous latents (rectified flow; JanusFlow arXiv:2411.07975, Transfusion).

Latents are cut into p x p patches; each patch goes through a linear patch
embedding + MLP aligner into the backbone width, plus an embedding of the
timestep t; the backbone sees the patches bidirectionally and a velocity head
maps each patch's hidden state back to p*p*C numbers.

Convention: x_t = t * x_1 + (1 - t) * x_0, with x_0 ~ N(0, I) noise at t = 0 and
data x_1 at t = 1, so the velocity is v = x_1 - x_0.

Shapes: B batch, C latent channels, h/w latent grid, p patch, N = (h/p)(w/p), D width.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import activation, mlp
from .config import GenerationConfig


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DDPM / DiT): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Move t towards noise (t = 0) for shift > 1: the SD3 shift applied to sigma = 1 - t."""
    if shift == 1.0:
        return t
    sigma = 1 - t
    return 1 - shift * sigma / (1 + (shift - 1) * sigma)


class FlowHead(nn.Module):
    def __init__(self, config: GenerationConfig, latent_channels: int, latent_grid: int, hidden_size: int):
        super().__init__()
        p = config.patch_size
        if latent_grid % p:
            raise ValueError(f"the latent grid {latent_grid} is not divisible by the patch size {p}")
        self.config = config
        self.p, self.c, self.grid = p, latent_channels, latent_grid
        patch_dim = latent_channels * p * p
        head_hidden = config.head_hidden or hidden_size
        self.patch_embed = mlp(patch_dim, hidden_size, config.aligner_depth, config.activation)
        self.time_embed = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Sequential(nn.Linear(hidden_size, head_hidden), activation(config.activation),
                                  nn.Linear(head_hidden, patch_dim))
        # Zero the last layer so training starts from v = 0 (as DiT zero-inits its final layer).
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def num_tokens(self) -> int:
        return (self.grid // self.p) ** 2

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.p
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
        return x.reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C*p*p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        p, C, g = self.p, self.c, self.grid // self.p
        x = x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
        return x.reshape(B, C, g * p, g * p)

    def embed(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noisy latents (B, C, h, w) at times t (B,) -> (B, N, D) backbone inputs."""
        h = self.patch_embed(self.patchify(x_t).to(self.head[0].weight.dtype))
        return h + self.time_embed(timestep_embedding(t).to(h.dtype))[:, None]

    def velocity(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.unpatchify(self.head(self.norm(hidden)))  # (B, N, D) -> (B, C, h, w)

    def sample_timesteps(self, n: int, device, generator=None) -> torch.Tensor:
        c = self.config
        t = torch.sigmoid(c.logit_mean + c.logit_std * torch.randn(n, device=device, generator=generator))
        return shift_timesteps(t, c.shift)

    def noise(self, x1: torch.Tensor, generator=None):
        """Training inputs: (x_t, t, velocity target) for clean latents x1."""
        t = self.sample_timesteps(x1.shape[0], x1.device, generator)
        x0 = torch.randn(x1.shape, device=x1.device, generator=generator, dtype=x1.dtype)
        tt = t.view(-1, 1, 1, 1).to(x1.dtype)
        return tt * x1 + (1 - tt) * x0, t, x1 - x0

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.velocity(hidden).float(), target.float())

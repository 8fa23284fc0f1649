"""Sampling a diffusers diffusion transformer conditioned by the backbone (the dit family).

The backbone runs once per call (conditional and unconditional rows in one
batch); only the generator runs per step. The noise levels are precomputed on
the device, as FlowMatchEulerDiscreteScheduler spaces them, and the loop
indexes them as tensors: no `.item()`, so nothing waits on the device inside
it. Euler matches the scheduler's step; Heun averages the velocity at both
ends of a step (two generator passes, one on the last step). `compile=True`
runs each generator pass (ControlNets and IP-Adapter included) through
torch.compile; its shapes are the same at every step, so it compiles once per
batch shape.
"""
from __future__ import annotations

import functools

import torch

from ..heads.dit import shifted_sigmas
from .cfg import guide, with_unconditional


@torch.inference_mode()
def generate_dit_latents(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, steps: int = 25,
                         guidance_scale: float = 5.0, solver: str = "euler", shift: float = 1.0,
                         generator: torch.Generator | None = None, progress=None, control=None,
                         reference=None, compile: bool = False) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> latents (B, C, h, w).

    `control`: [(control type, map latents (1 or B, C, h, w), scale), ...] for the model's
    ControlNets; both guidance halves see the same maps. `reference`: (SigLIP features of a
    reference picture (1 or B, N, D_enc), scale) for its IP-Adapter; the unconditional half
    gets zeros (no reference), as the adapter's training drops it.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    head = model.gen_head
    B, device = prompt_ids.shape[0], prompt_ids.device
    ids, mask, _ = with_unconditional(model, prompt_ids, prompt_mask, guidance_scale)
    condition = head.condition(model, ids, mask)  # the one backbone pass
    rows = ids.shape[0]
    sigmas = shifted_sigmas(steps, shift).to(device)
    control = [(kind, latents.to(device).expand(B, -1, -1, -1).repeat(rows // B, 1, 1, 1), scale)
               for kind, latents, scale in control or ()]
    if reference is not None:
        features, scale = reference
        features = features.to(device).expand(B, -1, -1)
        if rows > B:
            features = torch.cat([features, torch.zeros_like(features)])
        reference = (features, scale)

    step = compiled_generator_pass() if compile else generator_pass

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = x if rows == B else torch.cat([x, x])
        return guide(step(head, both, sigma.expand(rows), condition, control, reference), B, guidance_scale)

    x = torch.randn(B, head.c, head.grid, head.grid, device=device, generator=generator)
    for i in range(steps):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        v = velocity(x, sigma)
        if solver == "heun" and i < steps - 1:
            v = 0.5 * (v + velocity(x + (nxt - sigma) * v, nxt))
        x = x + (nxt - sigma) * v
        if progress is not None:
            progress(i + 1, steps)
    return x


def generator_pass(head, x, sigma, condition, control, reference) -> torch.Tensor:
    """One pass of the generator (and its ControlNets / IP-Adapter): the part that runs every step."""
    return head.velocity(x, sigma, condition, control, reference)


@functools.cache
def compiled_generator_pass():
    """generator_pass through torch.compile (built once; dynamo's guards recompile per model and shape)."""
    return torch.compile(generator_pass, dynamic=False)

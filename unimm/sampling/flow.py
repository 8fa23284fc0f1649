"""ODE sampling for flow matching: Euler or Heun from noise (t = 0) to data (t = 1).

Classifier-free guidance acts on the velocity, v = v_u + s (v_c - v_u)
(JanusFlow), with both halves in one batch against the cached prompt.
"""
from __future__ import annotations

import torch

from ..heads.flow import shift_timesteps
from ..models.unified import UnifiedModel
from .span import ImageSpanDecoder


@torch.inference_mode()
def generate_latents(model: UnifiedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     steps: int = 25, guidance_scale: float = 2.0, solver: str = "euler", shift: float = 1.0,
                     generator: torch.Generator | None = None, progress=None,
                     cache_prompt: bool = True) -> torch.Tensor:
    """prompt_ids (B, L) left-padded, each ending in BOI -> latents (B, C, h, w).

    Heun costs two model passes per step (one on the last step).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    head = model.gen_head
    span = ImageSpanDecoder(model, prompt_ids, prompt_mask, guidance_scale, cache_prompt)
    B, device = prompt_ids.shape[0], prompt_ids.device
    dtype = model.dtype

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((B,), t, device=device)
        return span.guide(head.velocity(span.hidden(head.embed(x.to(dtype), tt))).float())

    x = torch.randn(B, head.c, head.grid, head.grid, device=device, generator=generator)  # float32 state
    ts = shift_timesteps(torch.linspace(0, 1, steps + 1), shift).tolist()
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        v = velocity(x, t)
        if solver == "heun" and i < steps - 1:
            x_pred = x + (t_next - t) * v
            v = 0.5 * (v + velocity(x_pred, t_next))
        x = x + (t_next - t) * v
        if progress is not None:
            progress(i + 1, steps)
    return x

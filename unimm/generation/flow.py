"""Flow matching on VAE latents (JanusFlow, Transfusion): an ODE from noise to the image latent."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import GenerationFamily, register_family
from .options import SampleOptions, option

SOLVERS = ("euler", "heun")


@dataclass
class FlowOptions(SampleOptions):
    steps: int = option(25, low=1, ui_max=200, help="ODE steps from noise to the image")
    solver: str = option("euler", choices=SOLVERS, help="euler: one pass a step; heun: two (second order)")
    shift: float = option(1.0, low=0, low_open=True, help="timestep shift (> 1 spends more steps near noise)")


class Flow(GenerationFamily):
    name = "flow"
    tokenizer_type = "vae"
    options = FlowOptions
    summary = "rectified flow on VAE latents, CFG on the velocity"

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None):
        from ..heads.flow import FlowHead

        return FlowHead(config, image_tokenizer.latent_channels, image_tokenizer.grid, hidden_size)

    def num_tokens(self, model) -> int:
        return model.gen_head.num_tokens  # latent patches, not latent pixels

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None) -> torch.Tensor:
        x_t, t, velocity = model.gen_head.noise(targets, generator)
        h = model.image_span_hidden(prompt_ids, prompt_mask, model.gen_head.embed(x_t, t))
        return model.gen_head.loss(h, velocity)

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None) -> torch.Tensor:
        from ..sampling.flow import generate_latents

        return generate_latents(model, prompt_ids, prompt_mask, generator=generator, progress=progress,
                                **options.as_kwargs())


register_family(Flow())

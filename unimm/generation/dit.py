"""Diffusion transformers from diffusers (SD3's MMDiT, PixArt), conditioned by the unified backbone.

The backbone understands the prompt once; a diffusers transformer draws the
image latents by flow matching (MetaQuery, BLIP3-o, OmniGen2). The generator
saves in diffusers' own layout, a `transformer/` folder inside the model
directory that `SD3Transformer2DModel.from_pretrained` opens as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import GenerationFamily, register_family
from .flow import FlowOptions


@dataclass
class DiTOptions(FlowOptions):
    pass


class DiT(GenerationFamily):
    name = "dit"
    tokenizer_type = "vae"
    options = DiTOptions
    summary = "a diffusers diffusion transformer (MMDiT, PixArt) drawing VAE latents from the backbone's states"

    def generator_config(self, generator: dict):
        """`generation.generator`, checked and defaulted by its owner, DiTGeneratorConfig."""
        from ..config import from_dict
        from ..heads.dit import DiTGeneratorConfig

        return from_dict(DiTGeneratorConfig, generator, "generation.generator")

    def check_config(self, generation_config) -> None:
        if generation_config.position_embedding:
            raise ValueError("generation.position_embedding is an autoregressive head's option; the dit "
                             "paradigm's generator places image tokens itself")
        self.generator_config(generation_config.generator)

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None):
        from ..heads.dit import DiTHead

        return DiTHead(self.generator_config(config.generator), image_tokenizer.latent_channels, image_tokenizer.grid,
                       hidden_size, encoder_width)

    def num_tokens(self, model) -> int:
        return model.gen_head.num_tokens  # queries after the prompt (0 when reading the prompt's states)

    compilable = True  # sample() takes compile=True: each generator pass through torch.compile
    conditions = ("control", "reference")  # ControlNet maps; reference pictures for the IP-Adapter

    def library_parts(self, model) -> dict[str, torch.nn.Module]:
        head = model.gen_head
        parts = {"transformer": head.transformer, **{f"controlnet_{k}": net for k, net in head.controlnets.items()}}
        if head.ip_adapter is not None:
            parts["ip_adapter"] = head.ip_adapter
        return parts

    def attach(self, generator: dict, folder):
        """A `controlnet_<type>/` folder (SD3ControlNetModel) or an `ip_adapter/` folder."""
        import json
        from pathlib import Path

        from ..config import ConfigError
        from ..heads.ip_adapter import WEIGHTS_NAME

        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        if (folder / WEIGHTS_NAME).is_file():
            ip = {"num_queries": config.get("num_queries"), "hidden_dim": config.get("hidden_dim"),
                  "timestep_dim": config.get("timestep_in_dim")}
            if any(not isinstance(v, int) for v in ip.values()):
                raise ConfigError(f"{folder / 'config.json'} is not an IP-Adapter config (num_queries, hidden_dim, "
                                  "timestep_in_dim)")
            if isinstance(config.get("_scale"), (int, float)):
                ip["reference_scale"] = float(config["_scale"])  # the reference scale it was trained and shipped with
            return {**generator, "ip_adapter": {**(generator.get("ip_adapter") or {}), **ip}}, "ip_adapter"
        if config.get("_class_name") == "SD3ControlNetModel":
            kind = folder.name.removeprefix("controlnet_")
            if kind == folder.name:
                raise ConfigError(f"{folder} holds a ControlNet but its name does not say its control type: "
                                  "name it controlnet_<type> (e.g. controlnet_edges)")
            return ({**generator, "controlnets": {**generator.get("controlnets", {}), kind: config.get("num_layers")}},
                    f"controlnet_{kind}")
        return None

    def add_part(self, model, generator: dict, part: str) -> torch.nn.Module:
        """Install the part `attach` named on `model`'s head, in place; returns it."""
        return model.gen_head.add_part(self.generator_config(generator), part, model.encoder.hidden_size)

    def drop_part(self, model, generator: dict, part: str) -> None:
        model.gen_head.drop_part(self.generator_config(generator), part)

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None, control=None,
             reference=None) -> torch.Tensor:
        """`control`: {control type: latents of the targets' control maps (B, C, h, w)};
        `reference`: SigLIP features of each item's reference picture (B, N, D_enc)."""
        return model.gen_head.loss(model, prompt_ids, prompt_mask, targets, generator, control, reference)

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None,
               control=None, reference=None, compile: bool = False) -> torch.Tensor:
        """`control`: [(control type, its map's latents (1 or B, C, h, w), scale), ...];
        `reference`: (SigLIP features (1 or B, N, D_enc), scale)."""
        from ..sampling.dit import generate_dit_latents

        return generate_dit_latents(model, prompt_ids, prompt_mask, generator=generator, progress=progress,
                                    control=control, reference=reference, compile=compile,
                                    **options.as_kwargs())


register_family(DiT())

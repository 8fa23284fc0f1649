"""IP-Adapter for SD3-style generators, fed by the unified model's own SigLIP features.

An image prompt (a reference picture) steers the diffusion transformer: the
SigLIP encoder that the backbone reads for understanding turns the reference
into patch features; diffusers' `IPAdapterTimeImageProjection` resamples them
into `num_queries` tokens (conditioned on the timestep), and in every joint
attention block diffusers' `SD3IPAdapterJointAttnProcessor2_0` lets the image
latents attend to them, adding `scale` times the result. No second image
encoder: the adapter reads the features the model already has.

Files: `ip_adapter/ip-adapter.safetensors` holds `image_proj.*` and
`ip_adapter.<block>.*`, the layout diffusers' `load_ip_adapter` reads for SD3
(`SD3Transformer2DModel._load_ip_adapter_weights` builds the same modules from
it), with a config.json beside it. The generator's own `transformer/` folder
stays free of adapter weights, so the base model opens unchanged without it.

A reference of zeros is "no reference" (diffusers' negative image embedding):
the unconditional half of guidance and the image-drop of training use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError

# diffusers' SD3 IP-Adapter loader reads the sizes it can from the weights but assumes these two:
HEAD_DIM = 64  # channels per head in the image projection
DEPTH = 4  # resampler blocks in the image projection
WEIGHTS_NAME = "ip-adapter.safetensors"


@dataclass
class IPAdapterConfig:
    num_queries: int = 16  # image-prompt tokens the projection makes from the reference's patches
    hidden_dim: int = 64  # the projection's width: a multiple of 64 (heads of 64 channels)
    timestep_dim: int = 64  # sinusoidal timestep features fed to the projection
    reference_scale: float = 1.0  # the default reference_scale at sampling
    drop: float = 0.1  # training: the share of items whose reference is dropped (zeros), for guidance

    def __post_init__(self):
        if self.hidden_dim % HEAD_DIM:
            raise ConfigError(f"generation.generator.ip_adapter.hidden_dim must be a multiple of {HEAD_DIM}, "
                              f"got {self.hidden_dim}")
        if self.timestep_dim % 2:
            raise ConfigError(f"generation.generator.ip_adapter.timestep_dim must be even, got {self.timestep_dim}")
        if not 0 <= self.drop < 1:
            raise ConfigError(f"generation.generator.ip_adapter.drop must be in [0, 1), got {self.drop}")
        if self.reference_scale < 0:
            raise ConfigError(f"generation.generator.ip_adapter.reference_scale must be >= 0, "
                              f"got {self.reference_scale}")


class IPAdapter(nn.Module):
    """The image projection and one IP attention processor per attention block of `transformer`.

    The processors are installed into the transformer's attention modules but registered
    here, so they train, move and save with the adapter and never with the transformer.
    """

    weights_name = WEIGHTS_NAME

    def __init__(self, config: IPAdapterConfig, transformer, embed_dim: int):
        super().__init__()
        from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
        from diffusers.models.embeddings import IPAdapterTimeImageProjection

        tc = transformer.config
        inner = tc.attention_head_dim * tc.num_attention_heads
        self.config = {"embed_dim": embed_dim, "output_dim": inner, "hidden_dim": config.hidden_dim,
                       "depth": DEPTH, "heads": config.hidden_dim // HEAD_DIM,
                       "num_queries": config.num_queries, "timestep_in_dim": config.timestep_dim,
                       "num_blocks": len(transformer.attn_processors),
                       # The sampling default, not a shape: "_" keeps it out of the config check on load.
                       "_scale": config.reference_scale}
        self.image_proj = IPAdapterTimeImageProjection(
            embed_dim=embed_dim, output_dim=inner, hidden_dim=config.hidden_dim, depth=DEPTH,
            dim_head=HEAD_DIM, heads=config.hidden_dim // HEAD_DIM, num_queries=config.num_queries,
            timestep_in_dim=config.timestep_dim)
        self.ip_adapter = nn.ModuleList(
            SD3IPAdapterJointAttnProcessor2_0(hidden_size=inner, ip_hidden_states_dim=inner,
                                              head_dim=tc.attention_head_dim, timesteps_emb_dim=config.hidden_dim,
                                              scale=config.reference_scale)
            for _ in range(self.config["num_blocks"]))
        attentions = [m for m in transformer.modules() if hasattr(m, "set_processor")]
        if len(attentions) != len(self.ip_adapter):
            raise ConfigError(f"the generator has {len(attentions)} attention modules but "
                              f"{len(self.ip_adapter)} attention processors")
        # What they ran before (plain objects, not modules), for uninstall().
        self.__dict__["_replaced"] = [(attn, attn.processor) for attn in attentions]
        for attn, proc in zip(attentions, self.ip_adapter):
            # Not attn.set_processor(): that registers the processor as the attention's
            # submodule, and its weights would go into the transformer's own files.
            attn.__dict__["processor"] = proc

    def uninstall(self) -> None:
        """Give the transformer's attention modules back the processors they had before."""
        for attn, proc in self._replaced:
            attn.__dict__["processor"] = proc

    @property
    def scale(self) -> float:
        return self.ip_adapter[0].scale

    def set_scale(self, scale: float) -> None:
        for proc in self.ip_adapter:
            proc.scale = scale

    def embed(self, features: torch.Tensor, timestep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reference features (B, N, embed_dim) and timesteps (B,) -> the processors' keyword arguments."""
        tokens, temb = self.image_proj(features.to(self.image_proj.latents.dtype), timestep)
        return {"ip_hidden_states": tokens, "temb": temb}

    # -- its own files (a library part, see unimm.io) ---------------------------------------
    def save_pretrained(self, folder, safe_serialization: bool = True, max_shard_size: str | None = None) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config, indent=1) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME),
                  metadata={"format": "pt"})


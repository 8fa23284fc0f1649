"""Continuous image latents for flow matching: diffusers' AutoencoderKL.

Latents are normalised as `(z - shift_factor) * scaling_factor` so the flow
model sees roughly unit-variance inputs (SD / SD3 / FLUX convention). Shapes:
B batch, C latent channels, h/w latent grid, H/W pixels. Images in [-1, 1].
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import check_keys
from ..io import SaveLoadMixin
from .transform import ImageTransformMixin


def _autoencoder_keys() -> set[str]:
    from diffusers import AutoencoderKL

    return set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}


@dataclass
class VAEConfig:
    image_size: int = 32  # generation resolution
    # Local directory or hub id of a diffusers AutoencoderKL (e.g. an SD/SDXL VAE); None builds from `autoencoder`.
    pretrained: str | None = None
    # AutoencoderKL keyword arguments for a small VAE built from scratch.
    autoencoder: dict = field(default_factory=lambda: {
        "block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "norm_num_groups": 8,
        "layers_per_block": 1,
    })
    # None: take them from the VAE's own config (shift None there means 0).
    scaling_factor: float | None = None
    shift_factor: float | None = None

    def __post_init__(self):
        if self.pretrained is None:
            check_keys(self.autoencoder, _autoencoder_keys(), "image_tokenizer.autoencoder")


class VAETokenizer(ImageTransformMixin, SaveLoadMixin, nn.Module):
    config_class = VAEConfig
    type_name = "vae"

    def __init__(self, config: VAEConfig):
        super().__init__()
        from diffusers import AutoencoderKL

        self.config = config
        if config.pretrained:
            self.vae = AutoencoderKL.from_pretrained(config.pretrained)
        else:
            self.vae = AutoencoderKL(**config.autoencoder)
        vc = self.vae.config
        self.downsample = 2 ** (len(vc.block_out_channels) - 1)
        if config.image_size % self.downsample:
            raise ValueError(
                f"VAE image_size {config.image_size} is not divisible by the downsampling factor {self.downsample}"
            )
        self.scaling_factor = config.scaling_factor if config.scaling_factor is not None else vc.scaling_factor
        shift = config.shift_factor if config.shift_factor is not None else getattr(vc, "shift_factor", None)
        self.shift_factor = shift or 0.0

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def grid(self) -> int:
        return self.config.image_size // self.downsample

    def resolved_config(self) -> VAEConfig:
        keys = _autoencoder_keys()
        ae = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.vae.config.items() if k in keys}
        return VAEConfig(image_size=self.config.image_size, pretrained=None, autoencoder=ae,
                         scaling_factor=self.scaling_factor, shift_factor=self.shift_factor)

    def encode(self, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """(B, 3, H, W) -> normalised latents (B, C, h, w); the posterior mean unless sample=True."""
        dist = self.vae.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return (z - self.shift_factor) * self.scaling_factor

    def to_targets(self, images: torch.Tensor) -> torch.Tensor:
        """The image tokenizer contract: images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w)."""
        return self.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.vae.dtype)).sample  # (B, 3, H, W)

    def forward(self, images: torch.Tensor, generator=None):
        """Reconstruction for training: (recon, kl) with a sampled latent."""
        dist = self.vae.encode(images).latent_dist
        recon = self.vae.decode(dist.sample(generator)).sample
        return recon, dist.kl().mean()

    # -- the training contract (unimm.training.tokenizer) ---------------------------
    decoder_prefixes = ("vae.decoder.", "vae.post_quant_conv.")  # what decoder-only fine-tuning trains

    def training_forward(self, images: torch.Tensor):
        """(reconstruction, {name: regulariser}) for one training step: the KL term."""
        recon, kl = self(images)
        return recon, {"kl": kl}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    def usage(self, images: torch.Tensor) -> dict[str, float]:
        return {}  # a continuous latent has no codebook to report on

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """SD's recipe: shift and scale latents to zero mean, unit variance for the generator that reads them."""
        z = self.vae.encode(images).latent_dist.mean
        self.shift_factor, self.scaling_factor = float(z.mean()), float(1.0 / z.std().clamp_min(1e-6))

"""Understanding encoder: SigLIP vision tower from transformers -> patch features.

Shapes: B batch, C channels, H/W pixels, N patches, D encoder width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from ..config import check_keys


@dataclass
class SiglipEncoderConfig:
    # A local directory or hub id of a SigLIP checkpoint (full SigLIP or vision
    # tower only). None builds a randomly initialised tower from `siglip`.
    pretrained: str | None = None
    # Keyword arguments of transformers.SiglipVisionConfig for small models,
    # e.g. hidden_size, num_hidden_layers, image_size, patch_size.
    siglip: dict = field(default_factory=dict)
    # Which hidden state to read: -1 the last layer, -2 the one before (LLaVA
    # and Janus use the penultimate layer, whose features are less tuned to the
    # contrastive objective).
    feature_layer: int = -1
    # Input resolution fed to the tower. None: the checkpoint's native size.
    # Other sizes are handled by interpolating the position embeddings.
    image_size: int | None = None
    # Pixel normalisation; SigLIP checkpoints use 0.5 / 0.5.
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # "resize" squashes to a square; "pad" keeps the aspect ratio and pads with
    # the mean colour (what Janus does).
    resize_mode: str = "pad"
    # "pad": the shorter side is kept at least this many pixels (Janus: 14).
    min_size: int = 1

    def __post_init__(self):
        if self.resize_mode not in ("resize", "pad"):
            raise ValueError(f"resize_mode must be 'resize' or 'pad', got {self.resize_mode!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        check_keys(self.siglip, SiglipVisionConfig().to_dict(), "encoder.siglip")


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipEncoderConfig):
        super().__init__()
        self.config = config
        if config.pretrained:
            # Real checkpoints: a full SiglipModel directory loads its vision tower.
            self.model = SiglipVisionModel.from_pretrained(config.pretrained)
        else:
            self.model = SiglipVisionModel(SiglipVisionConfig(**config.siglip))
        vc = self.model.config
        self.native_size = vc.image_size
        self.image_size = config.image_size or vc.image_size
        self.patch_size = vc.patch_size
        self.hidden_size = vc.hidden_size
        if self.image_size % self.patch_size:
            raise ValueError(
                f"encoder image_size {self.image_size} is not a multiple of the patch size {self.patch_size}"
            )

    def resolved_config(self) -> SiglipEncoderConfig:
        """The config that rebuilds this module without the original checkpoint."""
        siglip = self.model.config.to_dict()
        # _name_or_path would record where the weights came from (a local path); the saved
        # model no longer needs it.
        siglip = {k: v for k, v in siglip.items() if k in SiglipVisionConfig().to_dict() and k != "_name_or_path"}
        return SiglipEncoderConfig(
            pretrained=None, siglip=siglip, feature_layer=self.config.feature_layer,
            image_size=self.image_size, image_mean=self.config.image_mean,
            image_std=self.config.image_std, resize_mode=self.config.resize_mode, min_size=self.config.min_size,
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # pixel_values: (B, C, H, W) -> features (B, N, D)
        out = self.model(
            pixel_values=pixel_values.to(self.model.dtype),
            output_hidden_states=True,
            interpolate_pos_encoding=pixel_values.shape[-1] != self.native_size
            or pixel_values.shape[-2] != self.native_size,
        )
        if self.config.feature_layer == -1:
            # last_hidden_state carries SigLIP's final layer norm.
            return out.last_hidden_state
        return out.hidden_states[self.config.feature_layer]

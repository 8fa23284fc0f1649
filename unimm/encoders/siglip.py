"""Understanding encoder: SigLIP vision tower from transformers -> patch features.

Several towers can be fused (LEO, Florence-VL, Cambrian): `also` lists more
towers (each its own SigLIP config, resolution and feature layer), and
`fusion` joins their features before the projector:
- "channel": each extra tower's patch grid is resampled to the main tower's
  grid and its features are appended along the width (D = sum of widths);
- "sequence": each extra tower's tokens follow the main tower's, after a
  learned linear map to the main width where the widths differ (N = sum).
The pipeline prepares pixels at the largest tower's resolution; each tower
resizes them to its own.

`tower: patches` is the encoder-free design (Fuyu): no vision transformer at
all; each patch's raw pixels (3 x patch_size^2 values) are the features, a
learned image-newline vector follows every row of patches, and the projector
(a linear one in Fuyu) embeds them straight into the decoder.

Shapes: B batch, C channels, H/W pixels, N patches, D encoder width.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from ..config import ConfigError, check_keys
from .layouts import NativeConfig, TilingConfig, rope_2d

FUSIONS = ("channel", "sequence")
TOWERS = ("siglip", "patches")
# What an entry of `also` may set: the tower itself; pixel handling is the main tower's.
TOWER_KEYS = ("pretrained", "siglip", "feature_layer", "image_size")


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
    # More towers fused with this one (multi-encoder models): mappings with TOWER_KEYS.
    also: list = field(default_factory=list)
    fusion: str = "channel"  # how their features join this tower's (see the module docstring)
    # "siglip", or "patches": no tower, raw patch pixels plus image-newline vectors (Fuyu);
    # then `image_size` and `patch_size` say how the picture is cut.
    tower: str = "siglip"
    patch_size: int | None = None
    # Any resolution by tiling (LLaVA-NeXT AnyRes): each image is read as a thumbnail plus a
    # grid of tiles at the encoder's size, the grid chosen from its aspect ratio (layouts.py).
    tiling: TilingConfig | None = None
    # Native resolution (Qwen2-VL): each picture at about its own size and aspect ratio, its
    # patches' 2-D positions interpolated, merge x merge patches per token (layouts.py).
    native: NativeConfig | None = None
    # Tokens per video frame (LLaVA-OneVision's budget): a clip's frames are each read as one view
    # whose square token grid is average-pooled to this many tokens (a square number, fewer than
    # an image's), so a clip of many frames fits the sequence. None: frames are read as images.
    frame_tokens: int | None = None

    def __post_init__(self):
        if self.frame_tokens is not None and not (isinstance(self.frame_tokens, int)
                                                   and not isinstance(self.frame_tokens, bool)
                                                   and self.frame_tokens >= 1):
            raise ConfigError(f"encoder.frame_tokens must be an int >= 1 (or null), got {self.frame_tokens!r}")
        if self.tower not in TOWERS:
            raise ConfigError(f"encoder.tower must be one of {', '.join(TOWERS)}, got {self.tower!r}")
        if self.tower == "patches":
            if not (isinstance(self.patch_size, int) and self.patch_size >= 1 and isinstance(self.image_size, int)):
                raise ConfigError("encoder.tower 'patches' needs image_size and patch_size (ints >= 1)")
            if self.pretrained or self.also:
                raise ConfigError("encoder.tower 'patches' has no vision transformer: drop pretrained and also")
            if self.tiling is not None or self.native is not None:
                raise ConfigError("encoder.tiling and encoder.native read pictures through a vision tower; "
                                  "tower 'patches' has none")
            self.siglip = {}  # not read (a base config's tower settings may be inherited here)
        if self.fusion not in FUSIONS:
            raise ConfigError(f"encoder.fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not isinstance(self.also, list) or not all(isinstance(t, dict) for t in self.also):
            raise ConfigError("encoder.also must be a list of tower mappings (siglip / pretrained, image_size, "
                              "feature_layer)")
        for i, tower in enumerate(self.also):
            check_keys(tower, TOWER_KEYS, f"encoder.also[{i}]")
        if self.resize_mode not in ("resize", "pad"):
            raise ValueError(f"resize_mode must be 'resize' or 'pad', got {self.resize_mode!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {self.min_size}")
        check_keys(self.siglip, SiglipVisionConfig().to_dict(), "encoder.siglip")


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipEncoderConfig):
        super().__init__()
        self.config = config
        if config.tower == "patches":
            self.model = None
            self.native_size = self.tower_size = config.image_size
            self.patch_size = config.patch_size
            pixels = 3 * config.patch_size ** 2
            self.newline = nn.Parameter(torch.randn(pixels) * 0.02)
        elif config.pretrained:
            # Real checkpoints: a full SiglipModel directory loads its vision tower.
            self.model = SiglipVisionModel.from_pretrained(config.pretrained)
        else:
            self.model = SiglipVisionModel(SiglipVisionConfig(**config.siglip))
        if self.model is not None:
            vc = self.model.config
            self.native_size = vc.image_size
            self.tower_size = config.image_size or vc.image_size  # what this tower reads
            self.patch_size = vc.patch_size
        if self.tower_size % self.patch_size:
            raise ValueError(
                f"encoder image_size {self.tower_size} is not a multiple of the patch size {self.patch_size}"
            )
        self.extra = nn.ModuleList(SiglipEncoder(SiglipEncoderConfig(**tower)) for tower in config.also)
        self.grid = self.tower_size // self.patch_size
        width = 3 * self.patch_size ** 2 if self.model is None else vc.hidden_size
        if self.model is None:  # raw patches, a newline after each row
            self.hidden_size, self._patches = width, self.grid * (self.grid + 1)
        elif config.fusion == "sequence":  # extra tokens follow, mapped to this tower's width where needed
            self.to_width = nn.ModuleList(nn.Identity() if e.hidden_size == width else nn.Linear(e.hidden_size, width)
                                          for e in self.extra)
            self.hidden_size = width
            self._patches = self.grid ** 2 + sum(e.num_patches for e in self.extra)
        else:
            self.hidden_size = width + sum(e.hidden_size for e in self.extra)
            self._patches = self.grid ** 2
        # The pixels the pipeline prepares: enough for the most detailed tower.
        self.image_size = max([self.tower_size, *(e.image_size for e in self.extra)])
        self._patch_grid = (self.grid, self.grid)  # (rows, cols) of the pixels being read; the rotary hooks use it
        if config.native is not None and config.native.rope and self.model is not None:
            self._add_rope()

    def _add_rope(self) -> None:
        """2-D rotary positions (encoder.native.rope): a forward hook on every layer's q and k
        projection turns its output by the patches' rows and columns (no weights added)."""
        vc = self.model.config
        heads = vc.num_attention_heads
        if (vc.hidden_size // heads) % 4:
            raise ConfigError(f"encoder.native.rope needs a head width divisible by 4 (half for rows, half for "
                              f"columns, in pairs); this tower's is {vc.hidden_size // heads}")
        # every layer's attention, wherever this transformers version nests the encoder; a bound
        # method (not a closure), so a deep copy of this encoder (EMA, a DPO reference) hooks itself
        for attention in (m for m in self.model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")):
            attention.q_proj.register_forward_hook(self._rotate)
            attention.k_proj.register_forward_hook(self._rotate)

    def _rotate(self, module, args, output):
        return rope_2d(output, *self._patch_grid, self.model.config.num_attention_heads, self.config.native.rope_theta)

    def resolved_config(self) -> SiglipEncoderConfig:
        """The config that rebuilds this module without the original checkpoint."""
        if self.model is None:
            return dataclasses.replace(self.config)
        siglip = self.model.config.to_dict()
        # _name_or_path would record where the weights came from (a local path); the saved
        # model no longer needs it.
        siglip = {k: v for k, v in siglip.items() if k in SiglipVisionConfig().to_dict() and k != "_name_or_path"}
        also = []
        for e in self.extra:
            r = e.resolved_config()
            also.append({"siglip": r.siglip, "feature_layer": r.feature_layer, "image_size": r.image_size})
        return SiglipEncoderConfig(
            pretrained=None, siglip=siglip, feature_layer=self.config.feature_layer,
            image_size=self.tower_size, image_mean=self.config.image_mean,
            image_std=self.config.image_std, resize_mode=self.config.resize_mode, min_size=self.config.min_size,
            also=also, fusion=self.config.fusion, tiling=self.config.tiling, native=self.config.native,
            frame_tokens=self.config.frame_tokens,
        )

    @property
    def num_patches(self) -> int:
        return self._patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, C, H, W) -> features (B, N, D), the towers fused."""
        feats = self._tower(_resized(pixel_values, self.tower_size))
        if not self.extra:
            return feats
        parts = [feats]
        for k, tower in enumerate(self.extra):
            f = tower(pixel_values)  # resizes to its own size
            if self.config.fusion == "sequence":
                parts.append(self.to_width[k](f))
                continue
            B, n, d = f.shape
            g = tower.grid
            f = f.transpose(1, 2).reshape(B, d, g, g)
            if g != self.grid:  # resample the extra tower's grid to this one's
                f = F.interpolate(f, size=(self.grid, self.grid), mode="bilinear", align_corners=False,
                                  antialias=g > self.grid)
            parts.append(f.flatten(2).transpose(1, 2))
        return torch.cat(parts, 1 if self.config.fusion == "sequence" else 2)

    def tower_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The main tower at the pixels' own size, any aspect ratio (its position embeddings
        interpolated to the patch grid): (B, C, H, W) -> (B, H/p * W/p, D), patches row by row."""
        return self._tower(pixel_values)

    def _tower(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.model is None:  # encoder-free: patch pixels row by row, each row ended by the newline vector
            B, p, g = pixel_values.shape[0], self.patch_size, self.grid
            patches = F.unfold(pixel_values.to(self.newline.dtype), p, stride=p)  # (B, 3p^2, g*g), row-major
            rows = patches.transpose(1, 2).reshape(B, g, g, -1)
            newline = self.newline.expand(B, g, 1, -1)
            return torch.cat([rows, newline], 2).reshape(B, g * (g + 1), -1)
        self._patch_grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
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


def _resized(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), untouched when already that size."""
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=pixels.shape[-1] > size)

"""VQ image tokenizer: a VQGAN-style conv encoder/decoder around a quantizer.

The conv stacks are diffusers' `Encoder` / `Decoder` (ResNet blocks, attention
at the lowest resolution and in the middle block, as in VQGAN and LlamaGen's
VQ-16); the quantizer comes from vector-quantize-pytorch (quantizers.py).
Images are in [-1, 1]. Shapes: B batch, H/W pixels, h/w latent grid, N = h*w.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..io import SaveLoadMixin
from .quantizers import Quantizer, QuantizerConfig
from .transform import ImageTransformMixin


@dataclass
class VQConfig:
    image_size: int = 32  # the generation resolution; tokens per image = (image_size / downsample)^2
    in_channels: int = 3
    # Pixels folded into channels before the first conv (pixel unshuffle, as DC-AE / ViT-VQGAN
    # patchify), unfolded after the last: the conv stacks run at 1/patch_size resolution,
    # patch_size^2 times cheaper at the widest level on a CPU. 1: convs see raw pixels.
    patch_size: int = 1
    # One entry per resolution level; the grid is downsampled 2x between levels,
    # so len(block_out_channels) = 5 gives LlamaGen / Janus's 16x.
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    latent_channels: int = 32  # encoder output before the 1x1 projection into code space
    # Attention at the lowest resolution level and in the middle block (VQGAN).
    attention_at_lowest: bool = True
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self):
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"VQ patch_size must be an int >= 1, got {self.patch_size!r}")
        if self.image_size % self.downsample:
            raise ValueError(
                f"VQ image_size {self.image_size} is not divisible by the downsampling factor {self.downsample}"
            )

    @property
    def downsample(self) -> int:
        return self.patch_size * 2 ** (len(self.block_out_channels) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


class VQTokenizer(ImageTransformMixin, SaveLoadMixin, nn.Module):
    config_class = VQConfig
    type_name = "vq"

    def __init__(self, config: VQConfig):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder, Encoder

        self.config = config
        n = len(config.block_out_channels)
        attn = config.attention_at_lowest
        down = ["DownEncoderBlock2D"] * (n - 1) + ["AttnDownEncoderBlock2D" if attn else "DownEncoderBlock2D"]
        up = ["AttnUpDecoderBlock2D" if attn else "UpDecoderBlock2D"] + ["UpDecoderBlock2D"] * (n - 1)
        common = dict(
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups, mid_block_add_attention=attn,
        )
        pixels = config.in_channels * config.patch_size**2  # channels the convs see
        self.encoder = Encoder(pixels, config.latent_channels, down_block_types=down, double_z=False, **common)
        self.decoder = Decoder(config.latent_channels, pixels, up_block_types=up, **common)
        qdim = config.quantizer.dim
        self.quant_conv = nn.Conv2d(config.latent_channels, qdim, 1)
        self.post_quant_conv = nn.Conv2d(qdim, config.latent_channels, 1)
        self.quantizer = Quantizer(config.quantizer)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def num_tokens(self) -> int:
        return self.config.grid**2

    def encode(self, images: torch.Tensor):
        """images (B, 3, H, W) in [-1, 1] -> codes (B, C, h, w), ids (B, N), aux loss."""
        z = self.quant_conv(self.encoder(F.pixel_unshuffle(images, self.config.patch_size)))  # (B, C, h, w)
        codes, ids, aux = self.quantizer(z)
        return codes, ids.flatten(1), aux

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.decoder(self.post_quant_conv(codes)), self.config.patch_size)  # (B, 3, H, W)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, N) -> images (B, 3, H, W) in roughly [-1, 1]."""
        g = self.config.grid
        codes = self.quantizer.codes_from_ids(ids.reshape(ids.shape[0], g, g))
        return self.decode_codes(codes.to(self.post_quant_conv.weight.dtype))

    def to_targets(self, images: torch.Tensor) -> torch.Tensor:
        """The image tokenizer contract: images (B, 3, H, W) in [-1, 1] -> what a generator learns (ids (B, N))."""
        return self.encode(images)[1]

    def forward(self, images: torch.Tensor):
        codes, ids, aux = self.encode(images)
        return self.decode_codes(codes), ids, aux

    # -- the training contract (unimm.training.tokenizer) ---------------------------
    decoder_prefixes = ("decoder.", "post_quant_conv.")  # what decoder-only fine-tuning trains

    def training_forward(self, images: torch.Tensor):
        """(reconstruction, {name: regulariser}) for one training step: the quantizer's aux loss."""
        recon, _, aux = self(images)
        return recon, {"aux": aux}

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[0]

    @torch.no_grad()
    def usage(self, images: torch.Tensor) -> dict[str, float]:
        """Codebook use on `images`: perplexity of the code histogram and unused codes."""
        return codebook_usage(self.encode(images)[1], self.num_codes)

    def calibrate(self, images: torch.Tensor) -> None:
        """Nothing to fit after training: ids need no scaling."""


def codebook_usage(ids: torch.Tensor, num_codes: int) -> dict[str, float]:
    """Perplexity of the code histogram (num_codes = all used evenly) and unused codes."""
    counts = torch.bincount(ids.flatten(), minlength=num_codes).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "unused_codes": int((counts == 0).sum()),
            "used_fraction": float((counts > 0).float().mean())}

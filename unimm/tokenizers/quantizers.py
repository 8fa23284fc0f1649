"""Quantizers from vector-quantize-pytorch behind one contract.

`codes, ids, aux_loss = quantizer(z)` with z and codes (B, C, h, w) and ids
(B, h, w); `quantizer.codes_from_ids(ids)` inverts the lookup. The families
differ in how codes are formed, not in how the rest of unimm uses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class QuantizerConfig:
    # "vq": nearest codebook vector (VQGAN / LlamaGen); "fsq": finite scalar
    # quantisation (arXiv:2309.15505); "lfq": lookup-free (MAGVIT-v2, arXiv:2310.05737).
    type: str = "vq"
    codebook_size: int = 256  # vq, lfq (lfq: a power of two); fsq: the product of `levels`
    codebook_dim: int = 8  # vq only; LlamaGen found 8-dim codes use the codebook best
    use_cosine_sim: bool = True  # vq: l2-normalised codes, as LlamaGen / Janus
    ema_update: bool = True  # vq: EMA codebook (True) or a codebook learned by gradient
    decay: float = 0.99  # vq: EMA decay
    commitment_weight: float = 0.25  # vq, lfq
    # vq: codes used less than this (EMA count) are re-seeded from the batch (dead-code
    # replacement, as in Jukebox / SoundStream); 0 turns it off.
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False  # vq: initialise the codebook by k-means on the first batch
    levels: tuple[int, ...] = (8, 5, 5, 5)  # fsq: levels per channel (1000 codes)
    entropy_loss_weight: float = 0.1  # lfq

    def __post_init__(self):
        if self.type not in ("vq", "fsq", "lfq"):
            raise ValueError(f"quantizer type must be 'vq', 'fsq' or 'lfq', got {self.type!r}")
        if self.type == "lfq" and (self.codebook_size & (self.codebook_size - 1)):
            raise ValueError(f"lfq codebook_size must be a power of two, got {self.codebook_size}")

    @property
    def num_codes(self) -> int:
        return math.prod(self.levels) if self.type == "fsq" else self.codebook_size

    @property
    def dim(self) -> int:
        """Channels the quantizer reads (what the encoder's quant_conv must produce)."""
        if self.type == "fsq":
            return len(self.levels)
        if self.type == "lfq":
            return int(math.log2(self.codebook_size))
        return self.codebook_dim


class Quantizer(nn.Module):
    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        if config.type == "vq":
            from vector_quantize_pytorch import VectorQuantize

            self.q = VectorQuantize(
                dim=config.codebook_dim, codebook_size=config.codebook_size,
                use_cosine_sim=config.use_cosine_sim, decay=config.decay,
                commitment_weight=config.commitment_weight, ema_update=config.ema_update,
                learnable_codebook=not config.ema_update, accept_image_fmap=True,
                threshold_ema_dead_code=config.dead_code_threshold, kmeans_init=config.kmeans_init,
            )
        elif config.type == "fsq":
            from vector_quantize_pytorch import FSQ

            self.q = FSQ(levels=list(config.levels), channel_first=True)
        else:
            from vector_quantize_pytorch import LFQ

            self.q = LFQ(
                dim=config.dim, codebook_size=config.codebook_size, channel_first=True,
                entropy_loss_weight=config.entropy_loss_weight,
                commitment_loss_weight=config.commitment_weight,
            )

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    def forward(self, z: torch.Tensor):
        # z: (B, C, h, w) -> codes (B, C, h, w), ids (B, h, w), aux loss (scalar)
        out = self.q(z)
        if self.config.type == "fsq":
            codes, ids = out
            aux = z.new_zeros(())
        else:
            codes, ids, aux = out
        return codes, ids, aux.sum() if aux.dim() else aux

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        # ids: (B, h, w) -> codes (B, C, h, w)
        if self.config.type == "vq":
            return self.q.get_output_from_indices(ids)
        return self.q.indices_to_codes(ids)

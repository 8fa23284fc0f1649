"""Generation heads, one per paradigm: what turns backbone states into image tokens or latents."""
from __future__ import annotations

from .autoregressive import ARImageHead
from .config import PARADIGMS, GenerationConfig
from .flow import FlowHead
from .masked import MaskedImageHead


def build_head(config: GenerationConfig, image_tokenizer, hidden_size: int):
    if config.paradigm == "flow":
        return FlowHead(config, image_tokenizer.latent_channels, image_tokenizer.grid, hidden_size)
    cls = ARImageHead if config.paradigm == "autoregressive" else MaskedImageHead
    return cls(config, image_tokenizer.num_codes, image_tokenizer.config.quantizer.dim, hidden_size)


__all__ = ["ARImageHead", "FlowHead", "GenerationConfig", "MaskedImageHead", "PARADIGMS", "build_head"]

"""Generation heads: what turns backbone states into image tokens or latents (built by the
generation families in unimm.generation, which own when each is used)."""
from __future__ import annotations

from .autoregressive import ARImageHead
from .config import GenerationConfig
from .flow import FlowHead
from .masked import MaskedImageHead

__all__ = ["ARImageHead", "FlowHead", "GenerationConfig", "MaskedImageHead"]

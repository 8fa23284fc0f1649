from .autoregressive import ARImageHead, GenerationConfig

__all__ = ["ARImageHead", "GenerationConfig"]

from .autoregressive import generate_image_tokens
from .logits import sample_next
from .text import generate_text

__all__ = ["generate_image_tokens", "generate_text", "sample_next"]

from .autoregressive import generate_image_tokens
from .flow import generate_latents
from .logits import sample_next
from .masked import generate_masked_tokens
from .text import generate_text

__all__ = ["generate_image_tokens", "generate_latents", "generate_masked_tokens", "generate_text", "sample_next"]

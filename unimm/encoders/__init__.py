from .siglip import SiglipEncoder, SiglipEncoderConfig

__all__ = ["SiglipEncoder", "SiglipEncoderConfig"]

"""Janus / Janus-Pro (transformers' `JanusForConditionalGeneration` format) <-> unimm."""
from .configs import ConversionError
from .convert import convert_janus, export_janus

__all__ = ["ConversionError", "convert_janus", "export_janus"]

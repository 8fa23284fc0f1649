"""Other formats in and out: open their checkpoints as unimm models, write unimm models back."""
from .janus import ConversionError, convert_janus, export_janus

__all__ = ["ConversionError", "convert_janus", "export_janus"]

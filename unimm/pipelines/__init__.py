from .load import available_configs, load, resolve_config
from .unified import UnimmPipeline

__all__ = ["UnimmPipeline", "available_configs", "load", "resolve_config"]

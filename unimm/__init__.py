"""unimm: unified multimodal models (understanding + generation on one backbone)."""
from .models import UnifiedConfig, UnifiedModel, build_model
from .pipelines import UnimmPipeline, available_configs, load

__version__ = "0.1.0"
__all__ = ["UnifiedConfig", "UnifiedModel", "UnimmPipeline", "available_configs", "build_model", "load"]

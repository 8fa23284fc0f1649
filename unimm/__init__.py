"""unimm: unified multimodal models (understanding + generation on one backbone)."""
from .models import UnifiedConfig, UnifiedModel, build_model
from .pipelines import UnimmPipeline, available_configs, load
from .pipelines.load import UntrainedModelWarning
from .pipelines.unified import UnknownWordsWarning

__version__ = "0.1.0"
__all__ = ["UnifiedConfig", "UnifiedModel", "UnimmPipeline", "UnknownWordsWarning", "UntrainedModelWarning",
           "available_configs", "build_model", "load"]

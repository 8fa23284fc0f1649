from .unified import SamplingDefaults, UnifiedConfig, UnifiedModel, build_model

__all__ = ["SamplingDefaults", "UnifiedConfig", "UnifiedModel", "build_model"]

from .causal_lm import Backbone, BackboneConfig

__all__ = ["Backbone", "BackboneConfig"]

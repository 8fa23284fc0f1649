"""Image tokenizers, chosen by `type`: discrete VQ (ids) or a continuous VAE (latents).

A model config names one as `{"type": "vq", ...fields}`, or points at a trained
one with `{"checkpoint": DIR}` (a directory written by its `save_pretrained`,
e.g. by `unimm train-tokenizer`), whose config and weights are then used.
"""
from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, to_dict, typed_from_dict
from .vae import VAEConfig, VAETokenizer
from .vq import VQConfig, VQTokenizer

IMAGE_TOKENIZERS = {"vq": VQTokenizer, "vae": VAETokenizer}


def _read_checkpoint_spec(directory: str) -> dict:
    import json

    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"image tokenizer checkpoint {directory}: config.json is missing")
    return json.loads(path.read_text())


def normalise_image_tokenizer_spec(spec: dict | None) -> dict:
    """Fill a spec with its defaults; a `checkpoint` spec takes its fields from the checkpoint."""
    spec = dict(spec or {})
    checkpoint = spec.pop("checkpoint", None)
    if checkpoint is not None:
        saved = normalise_image_tokenizer_spec(_read_checkpoint_spec(checkpoint))
        # Other keys are allowed only when they restate the checkpoint's own config
        # (as a normalised spec does); anything else would silently be ignored.
        if spec and normalise_image_tokenizer_spec(spec) != saved:
            raise ConfigError(f"image_tokenizer with a checkpoint takes no other keys, got {', '.join(spec)}")
        return {**saved, "checkpoint": checkpoint}
    kind, cfg = typed_from_dict({k: v.config_class for k, v in IMAGE_TOKENIZERS.items()}, spec, "vq", "image_tokenizer")
    return {"type": kind, **to_dict(cfg)}


def build_image_tokenizer(spec: dict):
    spec = dict(spec)
    checkpoint = spec.pop("checkpoint", None)
    kind, cfg = typed_from_dict({k: v.config_class for k, v in IMAGE_TOKENIZERS.items()}, spec, "vq", "image_tokenizer")
    cls = IMAGE_TOKENIZERS[kind]
    return cls.from_pretrained(checkpoint) if checkpoint else cls(cfg)


__all__ = ["IMAGE_TOKENIZERS", "VAEConfig", "VAETokenizer", "VQConfig", "VQTokenizer",
           "build_image_tokenizer", "normalise_image_tokenizer_spec"]

"""Masked generation over VQ ids (MaskGIT, Show-o): the whole image span refined in a few passes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import GenerationFamily, register_family
from .options import TokenSamplingOptions, option


@dataclass
class MaskedOptions(TokenSamplingOptions):
    steps: int = option(12, low=1, ui_max=200, help="decoding passes over the image span")


class Masked(GenerationFamily):
    name = "masked"
    tokenizer_type = "vq"
    options = MaskedOptions
    summary = "MaskGIT decoding of VQ ids with omni-attention"

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None):
        from ..heads.masked import MaskedImageHead

        return MaskedImageHead(config, image_tokenizer.num_codes, image_tokenizer.config.quantizer.dim, hidden_size)

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None) -> torch.Tensor:
        corrupted, masked = model.gen_head.mask(targets, generator)
        h = model.image_span_hidden(prompt_ids, prompt_mask, model.gen_head.embed(corrupted))
        return model.gen_head.loss(h, targets, masked)

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None) -> torch.Tensor:
        from ..sampling.masked import generate_masked_tokens

        return generate_masked_tokens(model, prompt_ids, prompt_mask, generator=generator, progress=progress,
                                      **options.as_kwargs())


register_family(Masked())

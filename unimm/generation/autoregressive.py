"""Autoregressive generation over VQ ids (Janus, LlamaGen): one token per backbone pass."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import GenerationFamily, register_family
from .options import TokenSamplingOptions, option


@dataclass
class AutoregressiveOptions(TokenSamplingOptions):
    decoding: str = option("sequential", choices=("sequential", "jacobi"),
                           help="sequential: one token per backbone pass; jacobi: speculative Jacobi decoding, "
                                "a window of drafts checked per pass (same distribution, same greedy ids)")
    jacobi_window: int = option(16, low=2, help="tokens scored per pass with decoding='jacobi'")


class Autoregressive(GenerationFamily):
    name = "autoregressive"
    tokenizer_type = "vq"
    options = AutoregressiveOptions
    progress_unit = "token"
    summary = "next-token prediction over VQ ids with a static KV cache"
    compilable = True
    position_embedding = True

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None):
        from ..heads.autoregressive import ARImageHead

        return ARImageHead(config, image_tokenizer.num_codes, image_tokenizer.config.quantizer.dim, hidden_size,
                           image_tokenizer.num_tokens)

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None) -> torch.Tensor:
        """The prompt predicts the image ids (B, N) one by one."""
        from ..models.unified import positions

        L = prompt_ids.shape[1]
        embeds = torch.cat([model.backbone.embed(prompt_ids), model.embed_image_tokens(targets[:, :-1])], 1)
        mask = model.span_key_mask(prompt_mask, targets.shape[1] - 1)  # (B, L + N - 1)
        h = model.hidden_states(embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False)
        return model.gen_head.loss(h[:, L - 1:], targets)  # positions L-1 .. L+N-2 predict tokens 0 .. N-1

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None,
               compile: bool = False) -> torch.Tensor:
        kwargs = options.as_kwargs()
        decoding, window = kwargs.pop("decoding"), kwargs.pop("jacobi_window")
        if decoding == "jacobi":
            from ..sampling.jacobi import generate_image_tokens_jacobi

            if compile:
                raise ValueError("compile applies to decoding='sequential'; Jacobi decoding runs eagerly")
            return generate_image_tokens_jacobi(model, prompt_ids, prompt_mask, generator=generator,
                                                progress=progress, window=window, **kwargs)
        from ..sampling.autoregressive import generate_image_tokens

        return generate_image_tokens(model, prompt_ids, prompt_mask, generator=generator, progress=progress,
                                     compile=compile, **kwargs)


register_family(Autoregressive())

"""Autoregressive generation over VQ ids (Janus, LlamaGen): one token per backbone pass."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import GenerationFamily, register_family
from .options import TokenSamplingOptions, option


@dataclass
class AutoregressiveOptions(TokenSamplingOptions):
    decoding: str = option("auto", choices=("auto", "sequential", "jacobi"),
                           help="sequential: one token per backbone pass; jacobi: speculative Jacobi decoding, "
                                "a window of drafts checked per pass (same distribution, same greedy ids); auto: "
                                "jacobi for one image at a time, sequential for batches and compiled decoding")
    jacobi_window: int = option(16, low=2, help="tokens scored per pass with decoding='jacobi'")


class Autoregressive(GenerationFamily):
    name = "autoregressive"
    tokenizer_type = "vq"
    options = AutoregressiveOptions
    progress_unit = "token"
    summary = "next-token prediction over VQ ids with a static KV cache"
    compilable = True
    position_embedding = True
    token_noise = True
    contrastive = True

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None):
        from ..heads.autoregressive import ARImageHead

        return ARImageHead(config, image_tokenizer.num_codes, image_tokenizer.config.quantizer.dim, hidden_size,
                           image_tokenizer.num_tokens)

    def loss(self, model, prompt_ids, prompt_mask, targets, generator=None) -> torch.Tensor:
        """The prompt predicts the image ids (B, N) one by one; in training, with
        `generation.token_noise` p > 0, each input id is swapped for a random code with chance p."""
        return self._token_nll(model, prompt_ids, prompt_mask, self._inputs(model, targets, generator), targets).mean()

    def contrast(self, model, prompt_ids, prompt_mask, targets, swapped_ids, swapped_mask, rows, generator=None):
        """One pass over the batch's prompts and the swapped captions of `rows`, each swapped row
        reading the same (possibly noised) image inputs as its own row: the batch's loss, and the
        summed NLL of each of those images under its caption (S,) and under its swapped one (S,)."""
        from ..processing import left_pad_to

        B, S = prompt_ids.shape[0], swapped_ids.shape[0]
        width = max(prompt_ids.shape[1], swapped_ids.shape[1])
        pad = model.token_ids.pad
        ids = torch.cat([left_pad_to(prompt_ids, width, pad), left_pad_to(swapped_ids, width, pad)])
        mask = torch.cat([left_pad_to(prompt_mask, width, 0), left_pad_to(swapped_mask, width, 0)])
        inputs = self._inputs(model, targets, generator)
        nll = self._token_nll(model, ids, mask, torch.cat([inputs, inputs[rows]]), torch.cat([targets, targets[rows]]))
        return nll[:B].mean(), nll[:B][rows].sum(1), nll[B:].sum(1)

    @staticmethod
    def _inputs(model, targets, generator=None) -> torch.Tensor:
        """The teacher-forced inputs: tokens 0 .. N-2, noised in training by generation.token_noise."""
        inputs = targets[:, :-1]
        p = model.config.generation.token_noise
        if p > 0 and model.training:
            inputs = corrupt_ids(inputs, p, model.image_tokenizer.num_codes, generator)
        return inputs

    @staticmethod
    def _token_nll(model, prompt_ids, prompt_mask, inputs, targets) -> torch.Tensor:
        """(B, N) cross-entropy of each image token given the prompt and the inputs before it."""
        from ..models.unified import positions

        L = prompt_ids.shape[1]
        embeds = torch.cat([model.backbone.embed(prompt_ids), model.embed_image_tokens(inputs)], 1)
        mask = model.span_key_mask(prompt_mask, inputs.shape[1])  # (B, L + N - 1)
        h = model.hidden_states(embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False)
        return model.gen_head.token_nll(h[:, L - 1:], targets)  # positions L-1 .. L+N-2 predict tokens 0 .. N-1

    def sample(self, model, prompt_ids, prompt_mask, options, generator=None, progress=None,
               compile: bool = False) -> torch.Tensor:
        kwargs = options.as_kwargs()
        decoding, window = kwargs.pop("decoding"), kwargs.pop("jacobi_window")
        if decoding == "auto":
            decoding = self.auto_decoding(model, prompt_ids.shape[0], compile)
        if decoding == "jacobi":
            from ..sampling.jacobi import generate_image_tokens_jacobi

            if compile:
                raise ValueError("compile applies to decoding='sequential'; Jacobi decoding runs eagerly")
            return generate_image_tokens_jacobi(model, prompt_ids, prompt_mask, generator=generator,
                                                progress=progress, window=window, **kwargs)
        from ..sampling.autoregressive import generate_image_tokens

        return generate_image_tokens(model, prompt_ids, prompt_mask, generator=generator, progress=progress,
                                     compile=compile, **kwargs)

    @staticmethod
    def auto_decoding(model, batch: int, compile: bool = False) -> str:
        """What decoding='auto' runs for `batch` prompts: Jacobi for one image (3x the images/s of the
        sequential loop on a CPU, 4.6x fewer backbone passes, BENCHMARKS.md), the sequential loop
        for batches (a pass then costs its arithmetic and the batch advances by its slowest row:
        0.28x at 16 on a CPU), under `compile`, and for backbones whose attention takes no 4-D mask."""
        from ..models.masks import MASKABLE_ATTENTION

        attention = model.backbone.hf_config._attn_implementation
        return "jacobi" if batch == 1 and not compile and attention in MASKABLE_ATTENTION else "sequential"


def corrupt_ids(ids: torch.Tensor, p: float, num_codes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`ids` with each entry replaced, with chance `p`, by a code drawn uniformly from [0, num_codes)."""
    hit = torch.rand(ids.shape, device=ids.device, generator=generator) < p
    noise = torch.randint(0, num_codes, ids.shape, device=ids.device, generator=generator, dtype=ids.dtype)
    return torch.where(hit, noise, ids)


register_family(Autoregressive())

"""Generation families: one registered module per paradigm, one contract for all.

A family owns everything that differs between ways of generating an image
from the backbone: the head it builds, the image tokenizer type it reads
(VQ ids or VAE latents), how many sequence positions an image takes, the
training loss, the sampler, and its sampling options (a dataclass that
defaults and checks them). The model, pipeline, CLI and app only ask the
family; none of them names a paradigm. A new paradigm is one module that
subclasses `GenerationFamily` and calls `register_family`, plus a model
config that sets `generation: {paradigm: NAME}`.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from .options import SampleOptions, TokenSamplingOptions, check_value, option

_FAMILIES: dict[str, "GenerationFamily"] = {}


class GenerationFamily:
    """The contract. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    tokenizer_type: ClassVar[str]  # the image tokenizer `type` it reads: "vq" (ids) or "vae" (latents)
    options: ClassVar[type[SampleOptions]]
    progress_unit: ClassVar[str] = "step"  # what `progress(step, total)` counts, for bars
    summary: ClassVar[str] = ""
    compilable: ClassVar[bool] = False  # sample() takes compile=True (a torch.compile'd decode step)
    # Extra conditions sample() and loss() take as keyword arguments: "control" (ControlNet
    # maps), "reference" (SigLIP features of reference pictures for an IP-Adapter).
    conditions: ClassVar[tuple[str, ...]] = ()
    position_embedding: ClassVar[bool] = False  # its head takes generation.position_embedding
    token_noise: ClassVar[bool] = False  # its loss takes generation.token_noise
    contrastive: ClassVar[bool] = False  # it implements contrast() (the trainer's prompt_contrast)

    def check_config(self, generation_config) -> None:
        """Check the family's own settings (`generation.generator`) when a config is read."""
        if generation_config.generator:
            raise ValueError(f"generation.generator configures a separate generator; the {self.name} "
                             f"paradigm builds none")
        if generation_config.position_embedding and not self.position_embedding:
            raise ValueError(f"generation.position_embedding is an autoregressive head's option; the {self.name} "
                             "paradigm's head places image tokens itself")
        if generation_config.token_noise and not self.token_noise:
            raise ValueError(f"generation.token_noise corrupts teacher-forced image tokens in autoregressive "
                             f"training; the {self.name} paradigm does not train that way")

    def library_parts(self, model) -> dict[str, torch.nn.Module]:
        """Submodules saved in their library's own layout, each in a subfolder of the model
        directory named by its key (e.g. {"transformer": a diffusers model}), not in model.safetensors."""
        return {}

    def attach(self, generator: dict, folder) -> tuple[dict, str] | None:
        """For a folder holding one of the family's add-on parts saved by another model (e.g. a
        ControlNet), (the `generation.generator` mapping with that part added, the library part's
        name in `library_parts`); None when the folder is not such a part."""
        return None

    def add_part(self, model, generator: dict, part: str) -> torch.nn.Module:
        """Build and install on `model` the part `attach` named (its weights as built); return it."""
        raise NotImplementedError(f"the {self.name} paradigm has no add-on parts")

    def drop_part(self, model, generator: dict, part: str) -> None:
        """Undo add_part, leaving `model` with `generator` (the mapping it had before)."""
        raise NotImplementedError(f"the {self.name} paradigm has no add-on parts")

    def build_head(self, config, image_tokenizer, hidden_size: int, encoder_width: int | None = None) -> torch.nn.Module:
        """The trainable part between the backbone and the image tokenizer (model.gen_head);
        `hidden_size` is the backbone's width, `encoder_width` the understanding encoder's."""
        raise NotImplementedError

    def num_tokens(self, model) -> int:
        """Sequence positions one generated image takes."""
        return model.image_tokenizer.num_tokens

    def loss(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, targets: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss for prompts (B, L) ending in BOI and the tokenizer's targets for their images."""
        raise NotImplementedError

    def contrast(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, targets: torch.Tensor,
                 swapped_ids: torch.Tensor, swapped_mask: torch.Tensor, rows: torch.Tensor,
                 generator: torch.Generator | None = None):
        """For families with an exact image likelihood (`contrastive = True`): `loss()` of the batch,
        and for the batch rows `rows` (S,) the NLL of each one's image summed over its tokens, under
        its own prompt and under `swapped_ids` / `swapped_mask` (S, L'), another prompt for it."""
        raise NotImplementedError(f"the {self.name} paradigm has no exact image likelihood to compare prompts with")

    def sample(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, options: SampleOptions,
               generator: torch.Generator | None = None, progress=None, **kwargs) -> torch.Tensor:
        """Targets (what `model.image_tokenizer.decode` takes) for left-padded prompts ending in BOI.

        A family with `compilable = True` also takes `compile=True`; the pipeline passes it only then.
        """
        raise NotImplementedError


def register_family(family: GenerationFamily, replace: bool = False) -> GenerationFamily:
    if not replace and family.name in _FAMILIES:
        raise ValueError(f"a generation family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Remove a family registered by `register_family` (e.g. a test's)."""
    _FAMILIES.pop(name, None)


def get_family(name: str) -> GenerationFamily:
    _load_builtin()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"generation paradigm {name!r} is not available; choose one of "
                         f"{', '.join(family_names())}") from None


def family_names() -> tuple[str, ...]:
    _load_builtin()
    return tuple(_FAMILIES)


def _load_builtin() -> None:
    from . import autoregressive, dit, flow, masked  # noqa: F401 - each registers itself


__all__ = ["GenerationFamily", "SampleOptions", "TokenSamplingOptions", "check_value", "family_names",
           "get_family", "option", "register_family", "unregister_family"]

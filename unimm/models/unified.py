"""The unified model: one causal backbone that reads images and writes image tokens.

Understanding: SigLIP features -> projector -> spliced into the text embeddings
at the image-placeholder positions. Generation: prompt embeddings (ending in
begin-of-image), then the image span through its own embedding/aligner, read
out by its own head. The paradigm decides what the image span holds:
autoregressive: VQ ids, causal, each position predicts the next id;
masked: VQ ids or the mask token, bidirectional, each position predicts its own id;
flow: noisy VAE latent patches, bidirectional, each position predicts its velocity.
The model computes forward passes and losses; sampling loops live in
`unimm.sampling` and take the model as an argument.

Shapes: B batch, T sequence, L prompt length, N image tokens, M placeholders
per understood image, D backbone width, K codebook size, C/h/w latent channels/grid.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone, BackboneConfig
from ..config import MODEL_PARTS, ConfigError, from_dict, merge_config, to_dict, write_json
from ..encoders import SiglipEncoder, SiglipEncoderConfig
from ..folders import atomic_directory
from ..generation import get_family
from ..heads import GenerationConfig
from ..io import load_library_part, load_weights, save_library_part, save_weights
from ..processing import PromptConfig, TokenIds
from ..projectors import build_projector, normalise_projector_spec
from ..tokenizers import build_image_tokenizer, normalise_image_tokenizer_spec
from ..tokenizers.text import TextTokenizerConfig, build_text_tokenizer
from ..encoders.layouts import build_layout
from .cross_attention import CrossAttentionConfig
from .masks import attention_mask_4d

CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


@dataclass
class SamplingDefaults:
    """Sampling settings that ship with a model, so its results reproduce."""

    # Image sampling: a value set here overrides the generation family's own default; None
    # leaves it to the family's options dataclass (unimm.generation), which also checks
    # what is set here, when the config is read. Options the family does not take are unused.
    guidance_scale: float | None = None  # CFG weight (families: 5.0, Janus's)
    temperature: float | None = None  # autoregressive / masked token sampling (0: greedy)
    top_k: int | None = None  # 0: off
    top_p: float | None = None  # 1.0: off
    steps: int | None = None  # masked decoding passes (12) / flow ODE steps (25)
    solver: str | None = None  # flow ODE solver: "euler" or "heun"
    shift: float | None = None  # flow sampling timestep shift (> 1 spends more steps near noise)
    chat_max_new_tokens: int = 64
    chat_temperature: float = 0.0  # greedy answers by default
    # Best-of-N (unimm.pipelines.rerank): each image is drawn `best_of` times and the candidate the
    # model's own understanding path describes best (log p(prompt | image, best_of_question)) is
    # kept. 1: off. For every generation family; worth it where the model reads better than it draws.
    best_of: int = 1
    best_of_question: str = "Describe the image."

    def __post_init__(self):
        bad = [
            (self.chat_temperature < 0, "chat_temperature must be >= 0"),
            (self.chat_max_new_tokens < 1, "chat_max_new_tokens must be >= 1"),
            (isinstance(self.best_of, bool) or not isinstance(self.best_of, int) or self.best_of < 1,
             f"best_of must be an integer >= 1, got {self.best_of!r}"),
            (not isinstance(self.best_of_question, str) or not self.best_of_question.strip(),
             "best_of_question must be a non-empty question"),
        ]
        for failed, msg in bad:
            if failed:
                raise ValueError(msg)


STORAGE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class UnifiedConfig:
    format_version: int = FORMAT_VERSION
    name: str = "unimm"
    encoder: SiglipEncoderConfig = field(default_factory=SiglipEncoderConfig)
    projector: dict = field(default_factory=lambda: {"type": "mlp", "depth": 2})
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text_tokenizer: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    # {"type": "vq" | "vae", ...fields} or {"checkpoint": DIR} of a trained tokenizer.
    image_tokenizer: dict = field(default_factory=lambda: {"type": "vq"})
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    token_ids: TokenIds | None = None  # filled in from the tokenizer when the model is built
    # The type the weights files hold (recorded by save_pretrained). Loading always builds
    # float32 parameters (bf16/fp16 values are exact in float32); pass dtype= to load()
    # to compute in a lower precision.
    storage_dtype: str = "float32"
    # Words the model saw in generation prompts while training: generate() warns about
    # others, naming them. A list, "shapes" (the shapes world's caption words), or None
    # (unknown: no warning).
    vocabulary: list[str] | str | None = None
    # Cross-attention fusion (Flamingo): images read by gated cross-attention layers instead of
    # filling sequence positions (one marker token each); None: images spliced into the sequence.
    cross_attention: CrossAttentionConfig | None = None

    def __post_init__(self):
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"config format_version {self.format_version} is not supported (expected {FORMAT_VERSION})")
        self.projector = normalise_projector_spec(self.projector)
        self.image_tokenizer = normalise_image_tokenizer_spec(self.image_tokenizer)
        wants = get_family(self.generation.paradigm).tokenizer_type
        if self.image_tokenizer["type"] != wants:
            raise ConfigError(
                f"the {self.generation.paradigm} paradigm needs a {wants!r} image tokenizer, "
                f"got {self.image_tokenizer['type']!r}"
            )
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        if self.vocabulary is not None and self.vocabulary != "shapes" and not (
                isinstance(self.vocabulary, list) and all(isinstance(w, str) for w in self.vocabulary)):
            raise ConfigError(f"vocabulary must be a list of words, 'shapes' or null, got {self.vocabulary!r}")
        family = get_family(self.generation.paradigm)
        try:  # the shipped sampling values, checked by their owner
            family.options.resolve({}, self.sampling, family.name)
        except ValueError as e:
            raise ConfigError(f"sampling: {e}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "UnifiedConfig":
        return from_dict(cls, data, "model config")


class UnifiedModel(nn.Module):
    def __init__(self, config: UnifiedConfig):
        super().__init__()
        if config.token_ids is None:
            raise ConfigError("UnifiedModel needs config.token_ids; use build_model(config) to build from scratch")
        self.config = config
        self.token_ids = config.token_ids
        self.encoder = SiglipEncoder(config.encoder)
        self.backbone = Backbone(config.backbone, vocab_size=config.token_ids.vocab_size,
                                 cross_attention=config.cross_attention)
        D = self.backbone.hidden_size
        # How a picture becomes views, placeholders and what the decoder reads (one view, AnyRes
        # tiles, native resolution; in the sequence or through cross-attention).
        self.layout = build_layout(config.encoder, config.cross_attention, self.encoder.image_size,
                                   self.encoder.patch_size)
        self.projector = build_projector(config.projector, self.layout.projector_width(self.encoder.hidden_size), D,
                                         self.encoder.num_patches)
        self.image_tokenizer = build_image_tokenizer(config.image_tokenizer)
        self.family = get_family(config.generation.paradigm)  # owns head, loss, sampler and options
        self.gen_head = self.family.build_head(config.generation, self.image_tokenizer, D, self.encoder.hidden_size)
        self.layout.check(self)

    # -- sizes ------------------------------------------------------------------
    @property
    def num_understanding_tokens(self) -> int:
        """Placeholders one understood image view occupies in the sequence (M): its projected
        tokens, or one marker where cross-attention layers read them."""
        return self.layout.tokens_per_view(self.encoder, self.projector)

    @property
    def paradigm(self) -> str:
        return self.config.generation.paradigm

    @property
    def num_image_tokens(self) -> int:
        """Tokens one generated image takes (N)."""
        return self.family.num_tokens(self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.lm.dtype

    # -- building blocks used by losses and samplers ----------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(pixel_values)  # (I, N_patches, D_enc)
        return self.projector(feats)  # (I, M, D)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with image features spliced in at the placeholders, in reading order, as
        the model's layout lays them out (encoders/layouts.py; markers read by cross-attention keep
        their own embedding: `seeing` feeds the images)."""
        embeds = self.backbone.embed(input_ids)  # (B, T, D)
        is_image = input_ids == self.token_ids.image
        n_slots = int(is_image.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"the input has {n_slots} image placeholders but no images were given")
            return embeds
        feats = self.layout.features(self, input_ids, pixel_values)
        if feats is None:
            return embeds
        if n_slots != feats.shape[0]:
            raise ValueError(f"the input has {n_slots} image placeholders but the images' views give "
                             f"{feats.shape[0]} tokens")
        return embeds.masked_scatter(is_image.unsqueeze(-1), feats.to(embeds.dtype))

    def seeing(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, watch=None):
        """The context for a forward pass over `input_ids`: with cross-attention fusion, the
        blocks read each row's images inside it; otherwise (or with no images) nothing to do.
        It yields a list that gets, with `watch` (rows, positions), each block's attention over
        the images at those positions (R, V)."""
        read = None if pixel_values is None else self.layout.visual(self, input_ids, pixel_values)
        if read is None:
            return contextlib.nullcontext([])
        visual, key_mask = read
        return self.backbone.seeing(visual.to(self.dtype), key_mask, watch)

    def embed_image_tokens(self, ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Image token ids (B, T) that stand at image positions start, start + 1, ... -> (B, T, D)."""
        return self.gen_head.embed(ids, start)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.gen_head.logits(hidden)  # (B, ..., D) -> (B, ..., K)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.lm_head(hidden)  # (B, ..., D) -> (B, ..., V)

    def hidden_states(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        """Backbone without its LM head: (B, T, D) embeddings -> (B, T, D) hidden states."""
        return self.backbone.decoder(inputs_embeds, **kwargs).last_hidden_state

    def unconditional_ids(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """The CFG 'no prompt' row: every token but BOS and BOI replaced by pad (Janus)."""
        keep = prompt_ids == self.token_ids.boi
        if self.token_ids.bos is not None:
            keep |= prompt_ids == self.token_ids.bos
        return torch.where(keep, prompt_ids, torch.full_like(prompt_ids, self.token_ids.pad))

    @torch.no_grad()
    def images_to_targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> generation targets: (B, N) VQ ids, or (B, C, h, w) VAE latents."""
        return self.image_tokenizer.to_targets(images)

    def decode_images(self, targets: torch.Tensor) -> torch.Tensor:
        """VQ ids (B, N) or latents (B, C, h, w) -> images (B, 3, H, W) in about [-1, 1]."""
        return self.image_tokenizer.decode(targets)

    @staticmethod
    def span_key_mask(prompt_mask: torch.Tensor, n: int) -> torch.Tensor:
        """(B, L) prompt mask -> (B, L + n): the n image positions after it are always real."""
        return torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], n)], 1)

    def image_span_mask(self, prompt_mask: torch.Tensor, n: int) -> torch.Tensor:
        """Omni-attention mask for prompt + an n-token image span: (B, 1, L + n, L + n)."""
        return attention_mask_4d(self.span_key_mask(prompt_mask, n), self.backbone.hf_config._attn_implementation,
                                 self.dtype, image_start=prompt_mask.shape[1])

    def image_span_hidden(self, prompt_ids, prompt_mask, image_embeds) -> torch.Tensor:
        """Run prompt + a bidirectional image span; return the span's hidden states (B, N, D)."""
        L, n = prompt_ids.shape[1], image_embeds.shape[1]
        embeds = torch.cat([self.backbone.embed(prompt_ids), image_embeds], 1)
        h = self.hidden_states(embeds, attention_mask=self.image_span_mask(prompt_mask, n),
                               position_ids=positions(self.span_key_mask(prompt_mask, n)), use_cache=False)
        return h[:, L:]

    # -- losses -----------------------------------------------------------------
    def _answer_logits(self, input_ids, attention_mask, labels, pixel_values, ground=None, ground_at=None):
        """(logits at the answer positions (n_answer, V), their targets (n_answer,), their rows
        (n_answer,)), and with `ground` a fourth item: for its boxed rows a list of (blocks, R)
        `grounding_shares`, one per watched place (empty without boxed rows). The places: where the
        answer is predicted (no `ground_at`; every block but the first, which sees little more than
        that token's embedding), the question's word naming the object (`ground_at` (B,), every
        block), or both (`ground_at` (B, 2): the word's position, then the answer's)."""
        embeds = self.embed_inputs(input_ids, pixel_values)
        targets = labels[:, 1:]
        keep = targets != -100  # only score answer positions: the LM head never sees the rest
        watch, places = None, []
        if ground is not None:
            boxed = (~ground[:, 0].isnan()).nonzero()[:, 0]
            if ground_at is None:
                places = [(keep[boxed].float().argmax(1), True)]  # (positions, skip the first block)
            else:
                at = ground_at[boxed].reshape(len(boxed), -1)
                places = [(at[:, 0], False)] + ([(at[:, 1], True)] if at.shape[1] > 1 else [])
            watch = (boxed.repeat(len(places)), torch.cat([p for p, _ in places])) if len(boxed) else None
        with self.seeing(input_ids, pixel_values, watch) as seen:
            h = self.hidden_states(embeds, attention_mask=attention_mask,
                                   position_ids=positions(attention_mask), use_cache=False)
        rows = keep.nonzero()[:, 0]
        out = (self.text_logits(h[:, :-1][keep]).float(), targets[keep], rows)
        if ground is None:
            return out
        if watch is None:
            return *out, []
        shares = self.grounding_shares(seen, ground[watch[0]], skip_first=False).chunk(len(places), dim=1)
        return *out, [s[1:] if skip and len(s) > 1 else s for s, (_, skip) in zip(shares, places)]

    @staticmethod
    def grounding_shares(seen: list[torch.Tensor], boxes: torch.Tensor, skip_first: bool = True) -> torch.Tensor:
        """(blocks, R): the share of each cross-attention block's attention (heads averaged; without
        the first block where `skip_first`, as at the answer position, where it sees only that
        token's own embedding), at a watched position of each row, that falls on the visual tokens
        covering the box (x0, y0, x1, y1 in 0-1) of the object its question asks about. The
        grounding loss is -log of it: the lookup a question about one of several objects needs,
        trained directly. The row's image must be its only one, its tokens a square grid in
        raster order."""
        if not seen:
            raise ValueError("the grounding loss supervises cross-attention blocks; this model has none "
                             "(cross_attention: in the model config)")
        V = seen[0].shape[1]
        g = math.isqrt(V)
        if g * g != V:
            raise ValueError(f"the grounding loss needs each row's visual tokens to form a square grid, got {V}")
        lo = torch.arange(g, device=boxes.device, dtype=boxes.dtype) / g  # each cell's first edge
        cols = (lo[None] < boxes[:, 2:3]) & (lo[None] + 1 / g > boxes[:, 0:1])  # (R, g) cells the box spans
        rows = (lo[None] < boxes[:, 3:4]) & (lo[None] + 1 / g > boxes[:, 1:2])
        target = (rows[:, :, None] & cols[:, None, :]).flatten(1).float()  # (R, V)
        return torch.stack([(w.float() * target).sum(1) for w in ((seen[1:] or seen) if skip_first else seen)])

    def understanding_loss(self, input_ids, attention_mask, labels, pixel_values=None) -> torch.Tensor:
        """Next-token loss on the positions whose label is not -100 (answer text only)."""
        logits, targets, _ = self._answer_logits(input_ids, attention_mask, labels, pixel_values)
        return F.cross_entropy(logits, targets)

    def understanding_losses(self, groups: list[dict]) -> dict[str, torch.Tensor]:
        """An understanding batch given as one or more chat batches (its rows grouped by length,
        each group padded on its own): {"und_loss": the mean over every group's answer tokens},
        and where groups carry "ground" boxes, "ground_loss" (-log of `grounding_shares`, over
        every boxed row and watched place)."""
        total, count, ground, boxed = 0, 0, 0, 0
        for g in groups:
            logits, targets, _, *rest = self._answer_logits(**g)
            total = total + F.cross_entropy(logits, targets, reduction="sum")
            count += targets.numel()
            for shares in (rest[0] if rest else []):  # (blocks, R) per place: -log, averaged over blocks
                ground = ground - shares.clamp_min(1e-6).log().mean(0).sum()
                boxed += shares.shape[1]
        out = {"und_loss": total / count}
        if boxed:
            out["ground_loss"] = ground / boxed
        return out

    def answer_logprobs(self, input_ids, attention_mask, labels, pixel_values=None) -> torch.Tensor:
        """(B,) each row's log-probability of its answer: the sum over the positions whose label is
        not -100 (what a preference loss compares between a chosen and a rejected answer)."""
        logits, targets, rows = self._answer_logits(input_ids, attention_mask, labels, pixel_values)
        token = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
        return torch.zeros(input_ids.shape[0], device=token.device, dtype=token.dtype).index_add(0, rows, token)

    def generation_loss(self, prompt_ids, prompt_mask, targets, generator=None, control=None,
                        reference=None) -> torch.Tensor:
        """The family's image loss for prompts (ending in BOI) and targets from `images_to_targets`;
        `control` ({control type: map latents}) goes to families with ControlNets, `reference`
        (encoder pixel values of reference pictures, (B, 3, H, W)) to those with an IP-Adapter,
        as the encoder's features."""
        extra = {}
        if control is not None:
            extra["control"] = control
        if reference is not None:
            extra["reference"] = self.encoder(reference.to(self.dtype))  # (B, N, D_enc)
        for name in extra:
            if name not in self.family.conditions:
                what = {"control": "control maps", "reference": "reference images"}[name]
                raise ValueError(f"the training data has {what} but the {self.family.name} paradigm takes none")
        return self.family.loss(self, prompt_ids, prompt_mask, targets, generator, **extra)

    def generation_contrast(self, prompt_ids, prompt_mask, targets, swapped_ids, swapped_mask, swapped_rows,
                            generator=None):
        """`generation_loss` of the batch, and each image of rows `swapped_rows` scored (summed NLL)
        under its prompt and under `swapped_ids` (the same words bound to other objects): (loss,
        caption_nll (S,), swapped_nll (S,)). Families with an exact likelihood only (the others'
        `contrast` says so)."""
        return self.family.contrast(self, prompt_ids, prompt_mask, targets, swapped_ids, swapped_mask, swapped_rows,
                                    generator)

    def forward(self, und: dict | list | None = None, gen: dict | None = None, pref: dict | None = None,
                und_contrast: dict | None = None, every_weight: bool = False) -> dict[str, torch.Tensor]:
        """Losses for an understanding batch, a generation batch, or both (summed); for a
        preference batch (`pref`, chat rows as `und` has them) each row's answer log-probability
        ("pref_logps", (B,)), which a preference loss compares with a reference model's; for
        `und_contrast` (the same, rows 0..S-1 questions and S..2S-1 swapped ones) "contrast_logps". A
        mixture-of-experts backbone adds its routers' load-balancing loss ("router_loss") and
        the expert load it measured ("expert_load_max" / "_min", tensors without gradient).

        `every_weight` adds "grad_anchor", zero times the sum of every trainable weight, so each
        weight gets a gradient whether or not this batch used it: sharded data-parallel training
        (FSDP) reduces the same gradients on every process, whatever parts each one's samples ran."""
        out: dict[str, torch.Tensor] = {}
        moe = bool(self.backbone.routers())
        with self.backbone.routing() if moe else contextlib.nullcontext([]) as routed:
            if und is not None:  # a batch, or its rows grouped by length (data.length_buckets)
                out.update(self.understanding_losses(und if isinstance(und, list) else [und]))
            if gen is not None:
                gen = self._encoded(gen)
                if "swapped_ids" in gen:  # the trainer's prompt_contrast: each image under another caption too
                    out["gen_loss"], out["caption_nll"], out["swapped_nll"] = self.generation_contrast(**gen)
                else:
                    out["gen_loss"] = self.generation_loss(**gen)
            if pref is not None:
                out["pref_logps"] = self.answer_logprobs(**pref)
            if und_contrast is not None:  # the trainer's prompt_contrast: answers under two questions
                out["contrast_logps"] = self.answer_logprobs(**und_contrast)
        if not out:
            raise ValueError("forward needs an understanding batch (und=...), a generation batch (gen=...) "
                             "or a preference batch (pref=...)")
        if routed:
            out["router_loss"], load = self.backbone.router_loss(routed)
            out.update({k: torch.tensor(v) for k, v in load.items()})
        out["loss"] = sum(v for k, v in out.items() if k.endswith("_loss"))
        if every_weight:
            out["grad_anchor"] = 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
            out["loss"] = out["loss"] + out["grad_anchor"]
        return out

    def _encoded(self, gen: dict) -> dict:
        """A generation batch with `images` (and ControlNet `control_images`) in place of targets
        (and control targets): encoded here, inside forward, by the frozen image tokenizer, so a
        sharded model (FSDP) gathers its weights as for every other part of the step."""
        if "images" not in gen and "control_images" not in gen:
            return gen
        gen = dict(gen)
        with torch.no_grad():
            if "images" in gen:
                gen["targets"] = self.images_to_targets(gen.pop("images"))
            if "control_images" in gen:
                gen["control"] = {k: self.images_to_targets(m) for k, m in gen.pop("control_images").items()}
        return gen

    # -- saving and loading -----------------------------------------------------
    def resolved_config(self) -> UnifiedConfig:
        """This model's config with every part written out (no external checkpoint needed)."""
        image_tokenizer = {"type": self.image_tokenizer.type_name, **to_dict(self.image_tokenizer.resolved_config())}
        return dataclasses.replace(
            self.config,
            image_tokenizer=image_tokenizer,
            encoder=self.encoder.resolved_config(),
            backbone=self.backbone.resolved_config(),
            text_tokenizer=dataclasses.replace(self.config.text_tokenizer, pretrained=None),
        )

    def save_pretrained(self, directory, tokenizer=None, max_shard_size: str = "5GB",
                        dtype: str | torch.dtype | None = None, overwrite: bool = False) -> None:
        """config.json + safetensors weights (+ tokenizer files), swapped in atomically.

        `dtype` ("bfloat16", "float16", "float32" or a torch dtype) stores the weights in
        that type; by default they are stored as the model holds them. A folder holding
        other files is refused unless `overwrite`, which replaces only the model's own files
        (see unimm.io.atomic_directory).
        """
        dtype = self.dtype if dtype is None else dtype
        name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype
        if name not in STORAGE_DTYPES:
            raise ValueError(f"cannot store weights as {dtype!r}; use one of {', '.join(STORAGE_DTYPES)}")
        config = dataclasses.replace(self.resolved_config(), storage_dtype=name)
        with atomic_directory(directory, overwrite=overwrite) as tmp:
            write_json(to_dict(config), Path(tmp) / CONFIG_NAME)
            parts = self._library_parts()
            save_weights(self, tmp, max_shard_size=max_shard_size, dtype=getattr(torch, name),
                         exclude=tuple(parts))
            for prefix, (folder, part) in parts.items():
                save_library_part(part, Path(tmp) / folder, getattr(torch, name), max_shard_size)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

    @classmethod
    def from_pretrained(cls, directory, changes: dict | None = None, fresh=()) -> "UnifiedModel":
        """Open a saved model. `changes` (a mapping merged into its config, e.g.
        {"generation": {"position_embedding": True}}) builds it with those options; weights the
        change adds keep their initialisation and every other weight must still load. `fresh`
        names parts (of MODEL_PARTS) the change rebuilds, e.g. ("gen_head", "image_tokenizer") for another
        generation family and image tokenizer: their saved weights are not read, and they keep
        what the build gives them (an initialisation, or a tokenizer's own checkpoint)."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{directory} is not a unimm model directory: {CONFIG_NAME} is missing")
        try:
            data = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"cannot parse {cfg_path}: {e}") from e
        new: frozenset[str] = frozenset()
        fresh = tuple(fresh)
        unknown = sorted(set(fresh) - set(MODEL_PARTS))
        if unknown:
            raise ValueError(f"fresh names unknown part(s) {unknown}; parts: {', '.join(MODEL_PARTS)}")
        if fresh and not changes:
            raise ValueError("fresh parts need changes that rebuild them (e.g. another generation paradigm)")
        if changes:
            saved = set(cls(UnifiedConfig.from_dict(data)).state_dict())  # the saved config's weight names
            data = merge_config(data, changes)
        model = cls(UnifiedConfig.from_dict(data))
        if changes:
            new = frozenset(set(model.state_dict()) - saved)
        fresh = tuple(f"{p}." for p in fresh)
        parts = {prefix: v for prefix, v in model._library_parts().items() if not prefix.startswith(fresh)}
        load_weights(model, directory, skip=tuple(parts), new=new, fresh=fresh)
        added = []  # parts the change adds (a ControlNet, an IP-Adapter): none saved, every weight new
        for prefix, (folder, part) in parts.items():
            if not (directory / folder).exists() and all(f"{prefix}{k}" in new for k in part.state_dict()):
                added.append(folder)
            else:
                load_library_part(part, directory / folder)
        for folder in added:  # built now, as attach builds them: a ControlNet copies the *loaded* generator
            model.family.add_part(model, dict(model.config.generation.generator), folder)
        return model.eval()

    def _library_parts(self) -> dict[str, tuple[str, nn.Module]]:
        """{state-dict prefix: (subfolder, module)} for the family's parts saved in their own layout."""
        names = {id(m): n for n, m in self.named_modules()}
        return {f"{names[id(m)]}.": (folder, m) for folder, m in self.family.library_parts(self).items()}


def build_model(config: UnifiedConfig, corpus: list[str] | None = None):
    """Build a fresh (randomly initialised) model and its text tokenizer from a config.

    `corpus`: the lines a new text tokenizer trains on (the pipeline resolves config's
    `text_tokenizer.corpus`, e.g. "shapes"); None reads it as a text file.
    """
    config = dataclasses.replace(config)
    tokenizer = build_text_tokenizer(config.text_tokenizer, corpus)
    tc = config.text_tokenizer
    config.token_ids = TokenIds.from_tokenizer(tokenizer, tc.image_token, tc.boi_token, tc.eoi_token)
    return UnifiedModel(config), tokenizer


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: (B, T) mask -> (B, T) positions."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)

"""The public API: `pipe.generate(...)` makes images, `pipe.chat(...)` answers about them."""
from __future__ import annotations

import itertools
import operator
import random
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from ..images import to_pil
from ..folders import reading
from ..models.unified import UnifiedConfig, UnifiedModel, build_model
from ..processing import Processor, left_pad
from ..sampling.autoregressive import generate_image_tokens
from ..sampling.flow import generate_latents
from ..sampling.masked import generate_masked_tokens
from ..sampling.logits import check_sampling_args, make_generator
from ..sampling.text import generate_text
from ..tokenizers.text import load_text_tokenizer


class UnknownWordsWarning(UserWarning):
    """A generation prompt has words outside the model's training vocabulary (config.vocabulary)."""


class UnimmPipeline:
    def __init__(self, model: UnifiedModel, tokenizer):
        self.model = model.eval()
        enc = model.encoder
        self.processor = Processor(
            tokenizer, model.config.prompt, model.token_ids, enc.image_size, enc.config.image_mean,
            enc.config.image_std, enc.config.resize_mode, model.num_understanding_tokens,
            min_size=enc.config.min_size,
        )
        self.last_seed: int | None = None  # the seed the last generate() call used

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, config: UnifiedConfig) -> "UnimmPipeline":
        model, tokenizer = build_model(config)
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, directory) -> "UnimmPipeline":
        with reading(directory):  # model and tokenizer files from one save, even while another swaps in
            return cls(UnifiedModel.from_pretrained(directory), load_text_tokenizer(directory))

    def save_pretrained(self, directory, max_shard_size: str = "5GB", dtype=None, overwrite: bool = False) -> None:
        """Save model + tokenizer; `dtype` (e.g. "bfloat16") sets the type the weights are stored in.

        `directory` must be new, empty or an earlier save of a model; `overwrite=True` also
        accepts a folder holding other files and replaces only the model's own files there.
        """
        self.model.save_pretrained(directory, tokenizer=self.processor.tokenizer, max_shard_size=max_shard_size,
                                   dtype=dtype, overwrite=overwrite)

    def to(self, device=None, dtype=None) -> "UnimmPipeline":
        if isinstance(dtype, str):
            name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
            dtype = getattr(torch, name)
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def config(self) -> UnifiedConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- generation -------------------------------------------------------------
    def _warn_unknown_words(self, prompts: list[str]) -> None:
        known = self.config.vocabulary
        if not known:
            return
        known = set(known)
        for p in prompts:
            unknown = sorted({w for w in re.findall(r"[a-z]+", p.lower()) if w not in known})
            if unknown:
                warnings.warn(f"the prompt {p!r} has words this model never saw in training: {', '.join(unknown)} "
                              f"(it still draws, guided by the rest); the words it knows: {', '.join(sorted(known))}",
                              UnknownWordsWarning, stacklevel=3)


    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, guidance_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 do_sample: bool | None = None, seed: int | None = None, batch_size: int | None = None,
                 steps: int | None = None, solver: str | None = None, shift: float | None = None,
                 progress=None) -> list[Image.Image]:
        """Generate `num_images` images per prompt; returns them prompt by prompt.

        The same call serves every paradigm. Unset options take the model's
        shipped sampling defaults (config.sampling); options a paradigm does not
        use are ignored by it.
        - autoregressive / masked: temperature (0 or do_sample=False: greedy), top_k, top_p;
        - masked / flow: `steps` (decoding passes / ODE steps);
        - flow: `solver` ("euler" or "heun") and the timestep `shift`.
        `batch_size` caps the rows decoded together (CFG doubles them) to bound
        memory; the same seed and batch_size give the same images.
        `progress(step, total)` follows the tokens or steps.
        """
        prompts = _prompt_list(prompt_or_prompts)
        self._warn_unknown_words(prompts)
        num_images = _positive_int(num_images, "num_images")
        opts = self._generation_options(guidance_scale, temperature, top_k, top_p, do_sample, steps, solver, shift)
        rows = [self.processor.generation_ids(p) for p in prompts for _ in range(num_images)]
        longest, limit = max(len(r) for r in rows), self.model.backbone.max_positions
        if limit is not None and longest + self.model.num_image_tokens > limit:
            raise ValueError(
                f"the prompt is {longest} tokens; with {self.model.num_image_tokens} image tokens that needs "
                f"{longest + self.model.num_image_tokens} positions but the backbone holds {limit}: shorten the prompt"
            )
        batch_size = len(rows) if batch_size is None else _positive_int(batch_size, "batch_size")
        self.last_seed = _seed(seed)
        generator = make_generator(self.last_seed, self.device)
        sampler = SAMPLERS[self.model.paradigm]
        images: list[Image.Image] = []
        for start in range(0, len(rows), batch_size):
            ids, mask = left_pad(rows[start:start + batch_size], self.model.token_ids.pad)
            targets = sampler(self.model, ids.to(self.device), mask.to(self.device), generator=generator,
                              progress=progress, **opts)
            with torch.inference_mode():
                images += to_pil(self.model.decode_images(targets))
        return images

    def _generation_options(self, guidance_scale, temperature, top_k, top_p, do_sample, steps, solver, shift) -> dict:
        """Fill unset options from config.sampling, check them, keep those the paradigm's sampler takes."""
        d, paradigm = self.config.sampling, self.model.paradigm
        guidance_scale = float(d.guidance_scale if guidance_scale is None else guidance_scale)
        if not guidance_scale >= 0:  # also catches NaN
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")
        opts = {"guidance_scale": guidance_scale}
        if paradigm in ("autoregressive", "masked"):
            temperature = 0.0 if do_sample is False else d.temperature if temperature is None else temperature
            top_k = d.top_k if top_k is None else top_k
            top_p = d.top_p if top_p is None else top_p
            check_sampling_args(temperature, top_k, top_p)
            opts.update(temperature=temperature, top_k=top_k, top_p=top_p)
        if paradigm in ("masked", "flow"):
            default_steps = d.steps or (25 if paradigm == "flow" else 12)
            opts["steps"] = _positive_int(default_steps if steps is None else steps, "steps")
        if paradigm == "flow":
            opts["solver"] = solver or d.solver
            opts["shift"] = float(d.shift if shift is None else shift)
            if not opts["shift"] > 0:
                raise ValueError(f"shift must be > 0, got {opts['shift']}")
        return opts

    # -- chat -------------------------------------------------------------------
    def _chat_inputs(self, images, question: str, history):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty" if isinstance(question, str) or question is None
                             else f"the question must be a string, got {type(question).__name__}")
        turns, all_images = [], []
        for i, turn in enumerate(history or []):
            q, t_images, a = _history_turn(turn, i)
            turns.append((q, len(t_images), a))
            all_images += t_images
        images = _image_list(images)
        turns.append((question, len(images), None))
        all_images += images
        ids, _ = self.processor.chat_ids(turns)
        pixels = self.processor.pixel_values(all_images).to(self.device, self.model.dtype) if all_images else None
        return ids, pixels

    def _answer_tokens(self, images, question, history, max_new_tokens, temperature, top_k, top_p, seed):
        """Check and build everything now; return an iterator of answer token ids (EOS excluded)."""
        d = self.config.sampling
        temperature = d.chat_temperature if temperature is None else temperature
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        check_sampling_args(temperature, top_k, top_p)
        max_new = _positive_int(d.chat_max_new_tokens if max_new_tokens is None else max_new_tokens, "max_new_tokens")
        ids, pixels = self._chat_inputs(images, question, history)
        limit = self.model.backbone.max_positions
        if limit is not None:
            if len(ids) >= limit:
                raise ValueError(
                    f"the conversation is {len(ids)} tokens (images included) but the backbone holds {limit}: "
                    "shorten it or drop earlier turns"
                )
            max_new = min(max_new, limit - len(ids))
        input_ids = torch.tensor([ids], device=self.device)
        steps = generate_text(
            self.model, input_ids, torch.ones_like(input_ids), pixels, max_new_tokens=max_new,
            temperature=temperature, top_k=top_k, top_p=top_p,
            generator=make_generator(None if seed is None else _seed(seed), self.device),
        )
        eos = self.model.token_ids.eos
        return (int(t[0]) for t in itertools.takewhile(lambda t: int(t[0]) != eos, steps))

    def chat(self, image_or_images, question: str, history: list | None = None, stream: bool = False,
             max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None):
        """Answer `question` about zero, one or several images.

        history: earlier turns, each `(question, answer)` or
        `{"question": ..., "answer": ..., "images": [...]}`. Returns the answer, or
        with stream=True an iterator of text pieces that join to the same answer.
        Bad input raises here, before any streaming starts.
        """
        tokens = self._answer_tokens(image_or_images, question, history, max_new_tokens, temperature, top_k, top_p, seed)
        if stream:
            return self._stream_text(tokens)
        return self.processor.decode(list(tokens))

    def _stream_text(self, tokens) -> Iterator[str]:
        ids: list[int] = []
        emitted = ""
        for t in tokens:
            ids.append(t)
            text = self.processor.decode(ids)
            # Hold back a piece that ends inside a multi-byte character.
            if text.endswith("\ufffd") or not text.startswith(emitted):
                continue
            if len(text) > len(emitted):
                yield text[len(emitted):]
                emitted = text
        text = self.processor.decode(ids)
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted):]

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"UnimmPipeline(name={self.config.name!r}, paradigm={self.config.generation.paradigm!r}, "
                f"params={n / 1e6:.2f}M, device={self.device}, dtype={self.model.dtype})")


SAMPLERS = {"autoregressive": generate_image_tokens, "masked": generate_masked_tokens, "flow": generate_latents}


def _prompt_list(prompt_or_prompts) -> list[str]:
    prompts = [prompt_or_prompts] if isinstance(prompt_or_prompts, str) else prompt_or_prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"expected a prompt string or a non-empty list of them, got {prompt_or_prompts!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} must be a string, got {type(p).__name__}")
    return list(prompts)


def _positive_int(value, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _seed(seed) -> int:
    if seed is None:
        return random.randrange(2**31)
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be a whole number, got {seed!r}") from None
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def _image_list(images) -> list:
    if images is None:
        return []
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    for i, im in enumerate(images):
        if im is None:
            raise ValueError(f"image {i} is None")
    return images


def _history_turn(turn, i: int):
    """(question, images, answer) from a history entry, with errors that name the entry."""
    if isinstance(turn, dict):
        missing = [k for k in ("question", "answer") if k not in turn]
        if missing:
            raise ValueError(f"history turn {i} lacks {', '.join(missing)}")
        q, a, images = turn["question"], turn["answer"], _image_list(turn.get("images"))
    elif isinstance(turn, (list, tuple)) and len(turn) == 2:
        (q, a), images = turn, []
    else:
        raise ValueError(f"history turn {i} must be (question, answer) or a dict with question/answer/images, got {turn!r}")
    if not isinstance(q, str) or not isinstance(a, str):
        raise ValueError(f"history turn {i}: question and answer must be strings")
    return q, images, a

"""The public API: `pipe.generate(...)` makes images, `pipe.chat(...)` answers about them."""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from ..images import to_pil
from ..models.unified import UnifiedConfig, UnifiedModel, build_model
from ..processing import Processor, left_pad
from ..sampling.autoregressive import generate_image_tokens
from ..sampling.flow import generate_latents
from ..sampling.masked import generate_masked_tokens
from ..sampling.logits import check_sampling_args, make_generator
from ..sampling.text import generate_text
from ..tokenizers.text import load_text_tokenizer


class UnimmPipeline:
    def __init__(self, model: UnifiedModel, tokenizer):
        self.model = model.eval()
        enc = model.encoder
        self.processor = Processor(
            tokenizer, model.config.prompt, model.token_ids, enc.image_size, enc.config.image_mean,
            enc.config.image_std, enc.config.resize_mode, model.num_understanding_tokens,
        )
        self.last_seed: int | None = None  # the seed the last generate() call used

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, config: UnifiedConfig) -> "UnimmPipeline":
        model, tokenizer = build_model(config)
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, directory) -> "UnimmPipeline":
        return cls(UnifiedModel.from_pretrained(directory), load_text_tokenizer(directory))

    def save_pretrained(self, directory, max_shard_size: str = "5GB") -> None:
        self.model.save_pretrained(directory, tokenizer=self.processor.tokenizer, max_shard_size=max_shard_size)

    def to(self, device=None, dtype=None) -> "UnimmPipeline":
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def config(self) -> UnifiedConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- generation -------------------------------------------------------------
    def _max_positions(self) -> int | None:
        return self.model.backbone.max_positions

    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, guidance_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 do_sample: bool | None = None, seed: int | None = None, batch_size: int | None = None,
                 steps: int | None = None, solver: str | None = None, shift: float | None = None,
                 progress=None) -> list[Image.Image]:
        """Generate `num_images` images per prompt; returns them prompt by prompt.

        The same call serves every paradigm. Unset options take the model's
        shipped sampling defaults (config.sampling).
        - autoregressive / masked: temperature (0 or do_sample=False: greedy), top_k, top_p;
        - masked / flow: `steps` (decoding passes / ODE steps);
        - flow: `solver` ("euler" or "heun") and the timestep `shift`; temperature is unused.
        `batch_size` caps the rows decoded together (CFG doubles them) to bound
        memory; the same seed and batch_size give the same images.
        `progress(step, total)` follows the tokens or steps.
        """
        prompts = [prompt_or_prompts] if isinstance(prompt_or_prompts, str) else list(prompt_or_prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        d = self.config.sampling
        guidance_scale = d.guidance_scale if guidance_scale is None else guidance_scale
        temperature = d.temperature if temperature is None else temperature
        top_k = d.top_k if top_k is None else top_k
        top_p = d.top_p if top_p is None else top_p
        if do_sample is False:
            temperature = 0.0
        check_sampling_args(temperature, top_k, top_p)
        paradigm = self.model.paradigm
        steps = steps if steps is not None else d.steps or (25 if paradigm == "flow" else 12)
        solver = solver or d.solver
        shift = d.shift if shift is None else shift
        if steps < 1 or shift <= 0:
            raise ValueError(f"steps must be >= 1 and shift > 0, got steps={steps}, shift={shift}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale}")

        rows = [self.processor.generation_ids(p) for p in prompts for _ in range(num_images)]
        longest, limit = max(len(r) for r in rows), self._max_positions()
        if limit is not None and longest + self.model.num_image_tokens > limit:
            raise ValueError(
                f"the prompt is {longest} tokens; with {self.model.num_image_tokens} image tokens that needs "
                f"{longest + self.model.num_image_tokens} positions but the backbone holds {limit}: shorten the prompt"
            )
        self.last_seed = seed if seed is not None else random.randrange(2**31)
        generator = make_generator(self.last_seed, self.device)
        batch_size = batch_size or len(rows)
        images: list[Image.Image] = []
        for start in range(0, len(rows), batch_size):
            ids, mask = left_pad(rows[start:start + batch_size], self.model.token_ids.pad)
            ids, mask = ids.to(self.device), mask.to(self.device)
            common = dict(guidance_scale=guidance_scale, generator=generator, progress=progress)
            if paradigm == "flow":
                targets = generate_latents(self.model, ids, mask, steps=steps, solver=solver, shift=shift, **common)
            elif paradigm == "masked":
                targets = generate_masked_tokens(self.model, ids, mask, steps=steps, temperature=temperature,
                                                 top_k=top_k, top_p=top_p, **common)
            else:
                targets = generate_image_tokens(self.model, ids, mask, temperature=temperature, top_k=top_k,
                                                top_p=top_p, **common)
            with torch.inference_mode():
                images += to_pil(self.model.decode_images(targets))
        return images

    # -- chat -------------------------------------------------------------------
    def _chat_inputs(self, images, question: str, history):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        turns, all_images = [], []
        for turn in history or []:
            if isinstance(turn, dict):
                t_images = turn.get("images") or []
                t_images = list(t_images) if isinstance(t_images, (list, tuple)) else [t_images]
                turns.append((turn["question"], len(t_images), turn["answer"]))
                all_images += t_images
            else:
                q, a = turn
                turns.append((q, 0, a))
        turns.append((question, len(images), None))
        all_images += images
        ids, _ = self.processor.chat_ids(turns)
        pixels = self.processor.pixel_values(all_images).to(self.device, self.model.dtype) if all_images else None
        return ids, pixels

    def _answer_tokens(self, images, question, history, max_new_tokens, temperature, top_k, top_p, seed) -> Iterator[int]:
        d = self.config.sampling
        temperature = d.chat_temperature if temperature is None else temperature
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        check_sampling_args(temperature, top_k, top_p)
        max_new = d.chat_max_new_tokens if max_new_tokens is None else max_new_tokens
        ids, pixels = self._chat_inputs(images, question, history)
        limit = self._max_positions()
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
            temperature=temperature, top_k=top_k, top_p=top_p, generator=make_generator(seed, self.device),
        )
        for tok in steps:
            if int(tok[0]) == self.model.token_ids.eos:
                return
            yield int(tok[0])

    def chat(self, image_or_images, question: str, history: list | None = None, stream: bool = False,
             max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None):
        """Answer `question` about zero, one or several images.

        history: earlier turns, each `(question, answer)` or
        `{"question": ..., "answer": ..., "images": [...]}`. Returns the answer, or
        with stream=True an iterator of text pieces that join to the same answer.
        """
        tokens = self._answer_tokens(image_or_images, question, history, max_new_tokens, temperature, top_k, top_p, seed)
        if stream:
            return self._stream_text(tokens)
        return self.processor.decode(list(tokens))

    def _stream_text(self, tokens: Iterator[int]) -> Iterator[str]:
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

"""The public API: `pipe.generate(...)` makes images, `pipe.chat(...)` answers about them."""
from __future__ import annotations

import contextlib
import operator
import os
import random
import re
import warnings
from collections.abc import Iterator

import torch
from PIL import Image
from transformers import DynamicCache

from ..encoders.layouts import blocks
from ..images import to_pil
from ..folders import reading
from ..models.unified import UnifiedConfig, UnifiedModel, build_model
from ..processing import Processor, left_pad, normalise_text
from ..sampling.logits import check_sampling_args, make_generator
from ..sampling.prefix_cache import PrefixCache, image_fingerprints, image_spans, weights_key
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
            min_size=enc.config.min_size, layout=model.layout,
        )
        self.last_seed: int | None = None  # the seed the last generate() call used
        # The last conversation's KV cache: a follow-up turn prefills only what is new (prefix_cache.py).
        self.chat_cache = PrefixCache()

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_config(cls, config: UnifiedConfig) -> "UnimmPipeline":
        from ..data.corpus import corpus_lines

        tc = config.text_tokenizer
        model, tokenizer = build_model(config, None if tc.pretrained else corpus_lines(tc.corpus))
        return cls(model, tokenizer)

    @classmethod
    def from_pretrained(cls, directory, changes: dict | None = None, fresh=()) -> "UnimmPipeline":
        """Open a saved model; `changes` builds it with other options and `fresh` names the parts
        they rebuild (UnifiedModel.from_pretrained)."""
        with reading(directory):  # model and tokenizer files from one save, even while another swaps in
            return cls(UnifiedModel.from_pretrained(directory, changes, fresh), load_text_tokenizer(directory))

    def save_pretrained(self, directory, max_shard_size: str = "5GB", dtype=None, overwrite: bool = False) -> None:
        """Save model + tokenizer; `dtype` (e.g. "bfloat16") sets the type the weights are stored in.

        `directory` must be new, empty or an earlier save of a model; `overwrite=True` also
        accepts a folder holding other files and replaces only the model's own files there.
        """
        self.model.save_pretrained(directory, tokenizer=self.processor.tokenizer, max_shard_size=max_shard_size,
                                   dtype=dtype, overwrite=overwrite)

    def attach(self, path) -> "UnimmPipeline":
        """Add parts trained on another model with the same generator: a ControlNet's
        `controlnet_<type>/` folder, an `ip_adapter/` folder, or a model directory (every such
        part in it this model lacks). Only the new parts are built (on the model's device and
        dtype) and loaded; a part whose config does not fit this model's generator is refused,
        naming the keys that differ. An IP-Adapter is only as good as the match between the
        encoder it was trained with and this model's (only the width is checked). Returns the
        pipeline; save_pretrained then writes the parts with it."""
        import dataclasses
        from pathlib import Path

        from ..io import load_library_part

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a folder: give a controlnet_<type>/ or ip_adapter/ folder, "
                                    "or a model directory holding them")
        model, family = self.model, self.model.family
        generator = dict(model.config.generation.generator)
        own = {folder for folder, _ in model._library_parts().values()}
        candidates = [path] if family.attach(generator, path) else sorted(p for p in path.iterdir() if p.is_dir())
        added = {}
        for folder in candidates:
            found = family.attach(generator, folder)
            if found is not None and found[1] not in own:
                generator, part = found
                added[part] = folder
        if not added:
            raise ValueError(f"{path} holds no part this {family.name} model can take that it lacks "
                             f"(it has: {', '.join(sorted(own)) or 'none'})")
        before, done = dict(model.config.generation.generator), []
        try:
            for part, folder in added.items():
                module = family.add_part(model, generator, part)
                done.append(part)
                module.to(device=model.device, dtype=model.dtype).train(model.training)
                load_library_part(module, folder)
        except BaseException:  # a part that does not fit: the model is left as it was
            for part in reversed(done):
                family.drop_part(model, before, part)
            raise
        model.config = dataclasses.replace(
            model.config, generation=dataclasses.replace(model.config.generation, generator=generator))
        self.chat_cache.clear()
        return self

    def to(self, device=None, dtype=None) -> "UnimmPipeline":
        self.chat_cache.clear()  # its keys and values were computed on the old device / dtype
        if isinstance(dtype, str):
            name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
            if not isinstance(getattr(torch, name, None), torch.dtype):
                raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
            dtype = getattr(torch, name)
        self.model.to(device=check_device(device), dtype=dtype)
        return self

    @property
    def config(self) -> UnifiedConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_size(self) -> int:
        """The side of the images generate() returns, in pixels."""
        return self.model.image_tokenizer.config.image_size

    # -- generation -------------------------------------------------------------
    def _warn_unknown_words(self, prompts: list[str], reference: bool = False) -> None:
        """`reference`: the prompts go with a reference picture (IP-Adapter prompts, "a red object")."""
        known = self.config.vocabulary
        if not known:
            return
        if known == "shapes":
            from ..data.shapes import caption_vocabulary, reference_vocabulary

            known = caption_vocabulary() + (reference_vocabulary() if reference else ())
        known = set(known)
        for p in prompts:
            text = normalise_text(p, sentence=False) if self.config.prompt.normalise else p.lower()
            unknown = sorted({w for w in re.findall(r"[a-z]+", text) if w not in known})
            if unknown:
                warnings.warn(f"the prompt {p!r} has words this model never saw in training: {', '.join(unknown)} "
                              f"(it still draws, guided by the rest); the words it knows: {', '.join(sorted(known))}",
                              UnknownWordsWarning, stacklevel=3)

    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, guidance_scale: float | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 do_sample: bool | None = None, seed: int | None = None, batch_size: int | None = None,
                 steps: int | None = None, solver: str | None = None, shift: float | None = None,
                 progress=None, compile: bool = False, control_image=None, control_type=None,
                 control_scale=None, control_is_map: bool = False, reference_image=None,
                 reference_scale=None, best_of: int | None = None, **options) -> list[Image.Image]:
        """Generate `num_images` images per prompt; returns them prompt by prompt.

        The same call serves every generation family. Sampling options (the named
        ones and any other a family defines, passed as keywords) are defaulted and
        checked by the family's options dataclass (`sampling_options`); unset ones take
        the model's shipped defaults (config.sampling). An option the model's family
        does not take is an error naming it:
        - autoregressive / masked: temperature (0 or do_sample=False: greedy), top_k, top_p;
        - masked / flow: `steps` (decoding passes / ODE steps);
        - flow: `solver` ("euler" or "heun") and the timestep `shift`.
        `batch_size` caps the rows decoded together (CFG doubles them) to bound
        memory (default DEFAULT_BATCH_SIZE); the same seed and batch_size give the same
        images. A request whose images alone would take more than half the memory
        available now is refused before any work, with the largest count that fits.
        Each image's `info` holds the call's "seed" and its "index" in the call (with the
        same prompts, num_images, batch_size and options, that seed remakes it);
        `last_seed` repeats the seed for single-threaded convenience.
        `progress`: True shows a progress bar, a callable is called as `progress(step, total)`.
        `compile=True` runs the family's decode step through torch.compile (autoregressive:
        greedy ids unchanged, seeded samples drawn another way; the first call compiles).
        ControlNet (dit models that have one): `control_image` (a picture, or a list for several
        controls at once) is turned into the map `control_type` names ("edges", "segmentation";
        default: the model's only ControlNet) by the code that made the training maps, or taken
        as the map itself with `control_is_map=True`; `control_scale` (default 1.0, one or one
        per image) weights it. The maps used are in each image's info["control_maps"].
        IP-Adapter (dit models that have one): `reference_image` (a picture) steers the drawing
        through the model's own SigLIP features, weighted by `reference_scale` (default: the
        adapter's configured scale); with a reference the prompt may be "" (draw the reference's
        object again).
        Best-of-N: `best_of` (default: the model's config.sampling.best_of, 1 = off) draws each image
        that many times and keeps the candidate the model itself judges best (unimm.pipelines.rerank):
        by the prompt (the highest log p(prompt | image) for config.sampling.best_of_question, the
        understanding path's reading), by the control maps (the candidate's own map closest to the
        given one) and by the reference (the closest SigLIP feature), whichever the call has; several
        judges vote by summed ranks. info["judged_by"] names them and info holds each one's score
        ("caption_logprob", "control_agreement", "reference_similarity"). Candidates are drawn like
        extra images, so `generate(p, num_images=N, seed=s)` returns the candidates `best_of=N` chose
        from. Greedy decoding (temperature 0) draws once: its candidates would all be the same.
        """
        prompts = _prompt_list(prompt_or_prompts)
        num_images = _positive_int(num_images, "num_images")
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else _positive_int(batch_size, "batch_size")
        best_of = self._best_of(best_of, prompts, steered=control_image is not None or reference_image is not None)
        opts = self.sampling_options(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k,
                                     top_p=top_p, do_sample=do_sample, steps=steps, solver=solver, shift=shift,
                                     **options)
        best_of = 1 if opts.draws_alike else best_of  # greedy: every candidate would be the same image
        check_output_fits(len(prompts) * num_images * best_of, self.image_size)
        self._warn_unknown_words(prompts, reference=reference_image is not None)
        reference = self._reference(reference_image, reference_scale)  # after the cheap checks: it runs SigLIP
        rows = [self.processor.generation_ids(p, allow_empty=reference is not None)
                for p in prompts for _ in range(num_images * best_of)]
        longest, limit = max(len(r) for r in rows), self.model.backbone.max_positions
        if limit is not None and longest + self.model.num_image_tokens > limit:
            raise ValueError(
                f"the prompt is {longest} tokens; with {self.model.num_image_tokens} image tokens that needs "
                f"{longest + self.model.num_image_tokens} positions but the backbone holds {limit}: shorten the prompt"
            )
        seed = _seed(seed)
        self.last_seed = seed  # shared state: threads read the seed from each image's info
        generator = make_generator(seed, self.device)
        family = self.model.family
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if compile and not family.compilable:
            raise ValueError(f"compile is not available for the {family.name} paradigm")
        extra = {"compile": True} if compile else {}
        control, maps = self._control(control_image, control_type, control_scale, control_is_map)
        if control:
            extra["control"] = control
        if reference is not None:
            extra["reference"] = reference
        images: list[Image.Image] = []
        with _progress_callback(progress, family.progress_unit) as report:
            for start in range(0, len(rows), batch_size):
                ids, mask = left_pad(rows[start:start + batch_size], self.model.token_ids.pad)
                targets = family.sample(self.model, ids.to(self.device), mask.to(self.device), opts,
                                        generator=generator, progress=report, **extra)
                with torch.inference_mode():
                    images += to_pil(self.model.decode_images(targets))
        judged = self._judge(images, prompts, num_images * best_of, maps, reference, batch_size) if best_of > 1 else {}
        if judged:
            from .rerank import vote

            keep = vote(list(judged.values()), best_of)
            images, judged = [images[k] for k in keep], {name: s[keep] for name, s in judged.items()}
        for k, im in enumerate(images):
            im.info.update(seed=seed, index=k, prompt=prompts[k // num_images])
            if judged:
                im.info.update(best_of=best_of, judged_by=list(judged), **{name: float(s[k]) for name, s in judged.items()})
            if maps:
                im.info["control_maps"] = maps
        return images

    def _best_of(self, best_of, prompts: list[str], steered: bool) -> int:
        """How many candidates to draw per image: `best_of`, else the model's default. Candidates are
        judged by the prompt, a control map or a reference, so an empty prompt with neither takes the
        default as 1 and refuses an explicit best_of > 1."""
        judgeable = steered or all(p.strip() for p in prompts)
        if best_of is None:
            return self.config.sampling.best_of if judgeable else 1
        best_of = _positive_int(best_of, "best_of")
        if best_of > 1 and not judgeable:
            raise ValueError("best_of judges candidates by their prompt, control map or reference, and a prompt is "
                             "empty with neither: give a prompt or best_of=1")
        return best_of

    def _judge(self, images, prompts, per_prompt: int, maps, reference, batch_size: int) -> dict:
        """{score name: (N,) scores} of the candidates by every judge the call's inputs allow
        (unimm.pipelines.rerank): the prompt when none is empty, the control maps, the reference."""
        from .rerank import caption_logprobs, map_agreement, reference_similarity

        judged = {}
        if all(p.strip() for p in prompts):
            judged["caption_logprob"] = caption_logprobs(
                self.model, self.processor, images, [prompts[k // per_prompt] for k in range(len(images))],
                self.config.sampling.best_of_question, batch_size)
        if maps:
            judged["control_agreement"] = map_agreement(images, maps)
        if reference is not None:
            judged["reference_similarity"] = reference_similarity(self.model, self.processor, images, reference[0],
                                                                  batch_size)
        return judged

    def _reference(self, image, scale):
        """(SigLIP features (1, N, D_enc), scale) of a reference picture for the IP-Adapter, or None."""
        if image is None:
            if scale is not None:
                raise ValueError("reference_scale needs a reference_image")
            return None
        head = self.model.gen_head
        if "reference" not in self.model.family.conditions or getattr(head, "ip_adapter", None) is None:
            raise ValueError(f"reference_image needs a model with an IP-Adapter; this {self.model.family.name} "
                             "model has none")
        if isinstance(image, (list, tuple)):
            raise ValueError("reference_image takes one picture")
        from ..generation.options import check_value

        scale = head.config.ip_adapter.reference_scale if scale is None else check_value("reference_scale", scale, float,
                                                                                  {"low": 0})
        pixels = self.processor.whole_values(_image_list(image)).to(self.device, self.model.dtype)
        with torch.inference_mode():
            return self.model.encoder(pixels), scale

    def _control(self, images, types, scales, is_map: bool):
        """([(control type, map latents (1, C, h, w), scale)], {type: map image}) for generate()."""
        if images is None:
            if types is not None or scales is not None:
                raise ValueError("control_type and control_scale need a control_image")
            return [], {}
        family = self.model.family
        nets = list(getattr(self.model.gen_head, "controlnets", {})) if "control" in family.conditions else []
        if not nets:
            raise ValueError(f"control_image needs a model with a ControlNet; this {family.name} model has none")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if types is None:
            if len(nets) > 1:
                raise ValueError(f"control_type is needed: this model has ControlNets for {', '.join(nets)}")
            types = nets * len(images)
        types = list(types) if isinstance(types, (list, tuple)) else [types] * len(images)
        scales = [1.0] * len(images) if scales is None else (
            list(scales) if isinstance(scales, (list, tuple)) else [scales] * len(images))
        if not len(images) == len(types) == len(scales):
            raise ValueError(f"{len(images)} control image(s) but {len(types)} control type(s) and "
                             f"{len(scales)} scale(s)")
        from ..data.control import map_for_model
        from ..generation.options import check_value
        from ..images import load_image

        size, tok = self.image_size, self.model.image_tokenizer
        control, maps = [], {}
        for image, kind, scale in zip(images, types, scales):
            if kind not in nets:
                raise ValueError(f"this model has no {kind!r} ControlNet; it has: {', '.join(nets)}")
            if kind in maps:
                raise ValueError(f"control_type {kind!r} is given twice")
            scale = check_value("control_scale", scale, float, {"low": 0})
            picture = load_image(image)
            if is_map:
                if picture.size != (size, size):
                    raise ValueError(f"the {kind} control map is {picture.width}x{picture.height} px; this model "
                                     f"draws {size}x{size}: pass a map of that size, or a picture without "
                                     "control_is_map")
                cmap = picture
            else:  # as the training maps were made: from the picture at the model's size
                cmap = map_for_model(picture, kind, size)
            with torch.inference_mode():
                pixels = tok.preprocess(cmap)[None].to(self.device, self.model.dtype)
                control.append((kind, self.model.images_to_targets(pixels), scale))
            maps[kind] = cmap
        return control, maps

    def sampling_options(self, do_sample: bool | None = None, **given):
        """The family's options for one call: `given` (None = unset) over config.sampling, checked.

        `do_sample=False` means temperature 0 (greedy) for families that sample tokens.
        """
        family = self.model.family
        if do_sample is not None:
            if "temperature" not in family.options.names():
                raise ValueError(f"do_sample does not apply to the {family.name} paradigm; its options: "
                                 f"{', '.join(family.options.names())}")
            if do_sample is False:
                given["temperature"] = 0.0
        return family.options.resolve(given, self.config.sampling, family.name)

    # -- chat -------------------------------------------------------------------
    def _chat_inputs(self, images, question: str, history, video=None):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty" if isinstance(question, str) or question is None
                             else f"the question must be a string, got {type(question).__name__}")
        turns, seen = [], []  # seen: (picture, whether it is a video frame), in reading order
        asked = [_history_turn(turn, i) for i, turn in enumerate(history or [])]
        for q, t_images, t_frames, a in [*asked, (question, _image_list(images), _frames(video), None)]:
            turns.append((q, len(t_images) + len(t_frames), a))
            seen += [(im, False) for im in t_images] + [(im, True) for im in t_frames]
        pixels, layout = self.processor.prepare(*zip(*seen)) if seen else (None, [])
        ids, _ = self.processor.chat_ids(turns, layout)
        return ids, (pixels.to(self.device, self.model.dtype) if pixels is not None else None)

    def _answer_tokens(self, images, question, history, max_new_tokens, temperature, top_k, top_p, seed, video=None):
        """Check and build everything now; return an iterator of answer token ids (EOS excluded)."""
        d = self.config.sampling
        temperature = d.chat_temperature if temperature is None else temperature
        top_k = 0 if top_k is None else top_k
        top_p = 1.0 if top_p is None else top_p
        temperature, top_k, top_p = check_sampling_args(temperature, top_k, top_p)
        max_new = _positive_int(d.chat_max_new_tokens if max_new_tokens is None else max_new_tokens, "max_new_tokens")
        ids, pixels = self._chat_inputs(images, question, history, video)
        limit = self.model.backbone.max_positions
        if limit is not None:
            if len(ids) >= limit:
                raise ValueError(
                    f"the conversation is {len(ids)} tokens (images included) but the backbone holds {limit}: "
                    "shorten it or drop earlier turns"
                )
            max_new = min(max_new, limit - len(ids))
        # Reuse the keys and values of the conversation's earlier turns when the last call left them.
        tok = self.model.token_ids
        layout = blocks(ids, tok.image, tok.eoi)  # each image's runs of placeholders (several when tiled)
        spans = image_spans(ids, tok.image, [sum(runs) for runs in layout])
        views = [self.model.layout.num_views(runs, self.processor.num_image_tokens) for runs in layout]
        prints = image_fingerprints(pixels, views)
        state = weights_key(self.model)
        if not self.model.layout.cross_attends:
            past, cache = self.chat_cache.take(ids, spans, prints, state)
        else:  # its blocks read every image at every step, and a cache keeps no images: run it all
            past, cache = 0, None
        if cache is None:
            cache = DynamicCache(config=self.model.backbone.hf_config)
        first_new = next((k for k, (start, _) in enumerate(spans) if start >= past), len(spans))
        input_ids = torch.tensor([ids[past:]], device=self.device)
        steps = generate_text(
            self.model, input_ids, torch.ones_like(input_ids),
            pixels[sum(views[:first_new]):] if first_new < len(spans) else None,
            max_new_tokens=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=make_generator(None if seed is None else _seed(seed), self.device), cache=cache,
            past_length=past,
        )
        return self._tokens_then_keep(steps, ids, prints, cache, state)

    def _tokens_then_keep(self, steps, ids: list[int], prints: list[bytes], cache, state) -> Iterator[int]:
        """Answer token ids (EOS excluded) from `steps`; when they stop (EOS, the limit, or the caller
        closing the stream) the cache, which then holds the prompt and the answer fed so far, is kept
        for the next turn. After an error it is dropped: it may be half-written."""
        eos = self.model.token_ids.eos
        fed = list(ids)
        keep = False
        try:
            for t in steps:
                t = int(t[0])
                if t == eos:
                    break
                fed.append(t)
                yield t
            keep = True
        except GeneratorExit:
            keep = True
            raise
        finally:
            steps.close()
            n = cache.get_seq_length()
            if keep and len(ids) <= n <= len(fed):
                self.chat_cache.put(fed[:n], prints, cache, state)

    def chat(self, image_or_images, question: str, history: list | None = None, stream: bool = False,
             max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, video=None):
        """Answer `question` about zero, one or several images and a clip's frames.

        video: a short clip (an animated GIF / APNG / WebP, or a list of frames) whose frames
        follow the images, each read within the model's frame budget (encoder.frame_tokens; without
        one, as images). history: earlier turns, each `(question, answer)` or
        `{"question": ..., "answer": ..., "images": [...], "video": ...}`. Returns the answer, or
        with stream=True an iterator of text pieces that join to the same answer.
        Bad input raises here, before any streaming starts.
        """
        tokens = self._answer_tokens(image_or_images, question, history, max_new_tokens, temperature, top_k, top_p,
                                     seed, video)
        if stream:
            return self._stream_text(tokens)
        return self._answer_text(list(tokens))

    def _answer_text(self, ids: list[int]) -> str:
        """Decoded answer without the prompt's answer prefix (the space after "Assistant:"), which
        the model generates as part of its first token."""
        text = self.processor.decode(ids)
        prefix = self.config.prompt.answer_prefix
        return text[len(prefix):] if prefix and text.startswith(prefix) else text

    def _stream_text(self, tokens) -> Iterator[str]:
        """Text pieces as tokens arrive, decoding a short window per token (not the whole answer): the
        tokens since the last piece plus the ones before them as context, so word boundaries and
        multi-token characters come out as the full decode has them (vLLM's incremental detokeniser)."""
        decode = self.processor.decode
        prefix = self.config.prompt.answer_prefix or ""
        ids: list[int] = []
        context, read = 0, 0  # decode ids[context:]; ids[context:read] were already emitted
        head, emitted = "", ""  # head: text held back until the answer prefix can be stripped
        for t in tokens:
            ids.append(t)
            before, after = decode(ids[context:read]), decode(ids[context:])
            if after.endswith("\ufffd") or len(after) <= len(before) or not after.startswith(before):
                continue  # inside a multi-byte character, or nothing new yet
            piece = after[len(before):]
            context, read = read, len(ids)
            if len(head) < len(prefix):  # the start of the answer: drop the prompt's answer prefix
                head += piece
                if len(head) < len(prefix):
                    continue
                piece = head[len(prefix):] if head.startswith(prefix) else head
            if piece:
                emitted += piece
                yield piece
        text = self._answer_text(ids)
        if len(text) > len(emitted) and text.startswith(emitted):
            yield text[len(emitted):]

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"UnimmPipeline(name={self.config.name!r}, paradigm={self.config.generation.paradigm!r}, "
                f"params={n / 1e6:.2f}M, device={self.device}, dtype={self.model.dtype})")


@contextlib.contextmanager
def _progress_callback(progress, unit: str):
    """`progress` as a (step, total) callback: None/False none, True a tqdm bar, a callable as it is."""
    if progress is None or progress is False:
        yield None
        return
    if callable(progress) and not isinstance(progress, bool):
        yield progress
        return
    if progress is not True:
        raise ValueError(f"progress must be True, False or a callable (step, total), got {progress!r}")
    from tqdm.auto import tqdm

    bar = None

    def update(step: int, total: int):
        nonlocal bar
        if bar is None or step <= bar.n:  # a new batch starts a new bar
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc="generating", unit=unit, leave=False)
        bar.update(step - bar.n)  # Jacobi decoding reports several tokens per pass

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def _prompt_list(prompt_or_prompts) -> list[str]:
    prompts = [prompt_or_prompts] if isinstance(prompt_or_prompts, str) else prompt_or_prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"expected a prompt string or a non-empty list of them, got {prompt_or_prompts!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} must be a string, got {type(p).__name__}")
    return list(prompts)


def check_device(device) -> torch.device | None:
    """`device` as a torch.device this machine has, or a ValueError that says why not (None passes)."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            build = " (this torch is a CPU build)" if torch.version.cuda is None else ""
            raise ValueError(f"device {device!r}: CUDA is not available on this machine{build}")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    return d


DEFAULT_BATCH_SIZE = 16  # rows generate() decodes together unless told otherwise (CFG doubles them)


def available_memory() -> int | None:
    """Bytes of memory free for new allocations now (Linux / POSIX), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_output_fits(count: int, image_size: int, available: int | None = None) -> None:
    """Refuse `count` RGB images of `image_size` px whose pixels alone would take more than half
    the available memory, naming the largest count that fits."""
    available = available_memory() if available is None else available
    per_image = 3 * image_size * image_size
    if available is None or count * per_image <= available // 2:
        return
    raise ValueError(f"{count:,} images of {image_size}x{image_size} px would take {_bytes(count * per_image)}, "
                     f"more than half of the {_bytes(available)} of memory available; ask for at most "
                     f"{max(1, available // 2 // per_image):,} per call")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


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


def _frames(video) -> list:
    """A clip's frames (load_frames: an animated image file or a list of frames), [] for None."""
    if video is None:
        return []
    from ..images import load_frames

    return load_frames(video, max_frames=len(video) if isinstance(video, (list, tuple)) and video else 8)


def _history_turn(turn, i: int):
    """(question, images, frames, answer) from a history entry, with errors that name the entry."""
    if isinstance(turn, dict):
        missing = [k for k in ("question", "answer") if k not in turn]
        if missing:
            raise ValueError(f"history turn {i} lacks {', '.join(missing)}")
        q, a, images, frames = turn["question"], turn["answer"], _image_list(turn.get("images")), _frames(turn.get("video"))
    elif isinstance(turn, (list, tuple)) and len(turn) == 2:
        (q, a), images, frames = turn, [], []
    else:
        raise ValueError(f"history turn {i} must be (question, answer) or a dict with question/answer/images, got {turn!r}")
    if not isinstance(q, str) or not isinstance(a, str):
        raise ValueError(f"history turn {i}: question and answer must be strings")
    return q, images, frames, a

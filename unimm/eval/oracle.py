"""Stand-in "models" that draw ground truth, for checking the evaluator itself.

`OraclePipe` has the `generate` signature of a pipeline but renders, for each
prompt of the benchmark's four forms, a shapes-world scene that satisfies it:
evaluate_generation(OraclePipe()) must then score ~100%, and any shortfall is
the detector's or the scorer's fault, not a model's. `BlankPipe` draws empty
backgrounds (scores 0%). `RoundTripPipe` passes those ground-truth images
through a model's image tokenizer (encode, then decode): its score is the
ceiling the tokenizer puts on that model's generation score.
"""
from __future__ import annotations

import math
import random

from PIL import Image

from ..data.corpus import POSITIONS, SIZES
from ..data.shapes import BACKGROUND_RGB, BORDER, CLEARANCE, GAP, RADIUS, Obj, Scene, position_of, render
from .prompts import EvalPrompt, parse_prompt

__all__ = ["BlankPipe", "OraclePipe", "RoundTripPipe", "render_expected"]

# Grid cell (column, row) of each named region, read off position_of so it cannot drift from the world.
_CELL = {position_of((c + 0.5) / 3, (r + 0.5) / 3): (c, r) for c in range(3) for r in range(3)}
_CELL.pop(None)


def _random_centroid(rng: random.Random, position: str, r: float) -> tuple[float, float]:
    """A centroid well inside `position`'s cell and BORDER + r from the image edge (as the world places them)."""
    col, row = _CELL[position]
    lo, hi = r + BORDER, 1 - r - BORDER
    x0, x1 = max(col / 3 + CLEARANCE, lo), min((col + 1) / 3 - CLEARANCE, hi)
    y0, y1 = max(row / 3 + CLEARANCE, lo), min((row + 1) / 3 - CLEARANCE, hi)
    return rng.uniform(x0, x1), rng.uniform(y0, y1)


def expected_scene(prompt: EvalPrompt, rng: random.Random) -> Scene:
    """A random layout of exactly the objects `prompt` asks for, in distinct regions, not overlapping."""
    specs = [(e.colour, e.shape, e.position) for e in prompt.objects for _ in range(e.count)]
    size = prompt.size or rng.choice(SIZES)
    for _ in range(1000):
        free = [p for p in POSITIONS if p not in {s[2] for s in specs}]
        rng.shuffle(free)
        objs: list[Obj] = []
        for colour, shape, position in specs:
            position = position or free.pop()
            r = RADIUS[size]
            cx, cy = _random_centroid(rng, position, r)
            objs.append(Obj(shape, colour, size, position, cx, cy, r))
        if all(math.hypot(a.cx - b.cx, a.cy - b.cy) >= a.r + b.r + GAP
               for i, a in enumerate(objs) for b in objs[i + 1:]):
            return Scene("oracle", objs, prompt.text, [])
    raise RuntimeError(f"could not lay out {prompt.text!r}")


def render_expected(prompt: EvalPrompt | str, size: int = 32, rng: random.Random | None = None) -> Image.Image:
    """An image that satisfies `prompt` (an EvalPrompt or a prompt text of the benchmark's forms)."""
    if isinstance(prompt, str):
        parsed = parse_prompt(prompt)
        if parsed is None:
            raise ValueError(f"not a prompt of the benchmark's forms: {prompt!r}")
        prompt = parsed
    return render(expected_scene(prompt, rng or random.Random(0)), size)


class OraclePipe:
    """generate() returns ground-truth renders of each prompt: a perfect model."""

    def __init__(self, image_size: int = 32) -> None:
        self.image_size = image_size

    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, seed: int | None = None,
                 **_: object) -> list[Image.Image]:
        prompts = [prompt_or_prompts] if isinstance(prompt_or_prompts, str) else list(prompt_or_prompts)
        rng = random.Random(seed)
        return [render_expected(p, self.image_size, rng) for p in prompts for _ in range(num_images)]


class BlankPipe(OraclePipe):
    """generate() returns empty backgrounds: a model that draws nothing."""

    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, seed: int | None = None,
                 **_: object) -> list[Image.Image]:
        n = 1 if isinstance(prompt_or_prompts, str) else len(prompt_or_prompts)
        return [Image.new("RGB", (self.image_size, self.image_size), BACKGROUND_RGB) for _ in range(n * num_images)]


class RoundTripPipe(OraclePipe):
    """generate() returns ground-truth renders after a trip through `pipe`'s image tokenizer.

    A generation model can at best produce what its tokenizer can decode, so the
    evaluator's score on these images bounds the model's (for VQ: the nearest codes
    of a perfect image; for a VAE: its latent, no noise).
    """

    def __init__(self, pipe) -> None:
        model = pipe.model
        super().__init__(model.config.image_tokenizer["image_size"])
        self.model = model

    def generate(self, prompt_or_prompts: str | list[str], num_images: int = 1, seed: int | None = None,
                 batch_size: int | None = None, **_: object) -> list[Image.Image]:
        import torch

        from ..images import to_pil

        truth = super().generate(prompt_or_prompts, num_images, seed)
        step = batch_size or len(truth)
        param = next(self.model.parameters())
        out = []
        with torch.no_grad():
            for i in range(0, len(truth), step):
                x = torch.stack([self.model.image_tokenizer.preprocess(im) for im in truth[i:i + step]])
                x = x.to(device=param.device, dtype=param.dtype)
                out += to_pil(self.model.decode_images(self.model.images_to_targets(x)))
        return out

"""Scoring what steers a generator besides its prompt: ControlNet maps and IP-Adapter references.

Each item is scored twice, by the same model-free detector as the generation
benchmark, so following the steering input and following the prompt are
reported apart (a model can copy a layout and ignore the colours it was asked for):

- control: a fresh shapes-world scene is rendered at the model's size; its
  control map (`control_type`) and its caption go in. *Control adherence*: the
  detected objects have the scene's shapes at the scene's places (the multiset
  of (shape, region) is equal). *Prompt adherence*: the detected (colour,
  shape) multiset is the caption's.
- reference: `shapes.reference_pair` gives a reference picture and a prompt
  that leaves the shape out ("a blue object", or nothing). *Reference
  adherence*: exactly one object is found and it has the reference's shape.
  *Prompt adherence*: that object has the colour the prompt names (the
  reference's, when the prompt is empty) and the region it names, if any.

Scenes come from the world seeded WORLD_SEED_BASE + seed, far from the
training seeds; each item is sampled with its own seed derived from `seed`.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

# _WHERE: the phrase a caption uses for each region ("on the left"), the world's own wording.
from ..data.shapes import _WHERE, REFERENCE_SIZE, ShapesWorld, ShapesWorldConfig, reference_pair, render
from .detector import describe, detect
from .vqa import WORLD_SEED_BASE

__all__ = ["evaluate_control", "evaluate_reference"]


def _item_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % 2**63


def _summary(task: str, samples: list[dict], seconds: float, size: int, seed: int, what: str,
             sample_kwargs: dict, best_of: int) -> dict[str, Any]:
    n = len(samples)
    both = sum(s[what] and s["prompt_ok"] for s in samples)
    return {"task": task, "num_images": n, "image_size": size, "world_seed": WORLD_SEED_BASE + seed, "best_of": best_of,
            f"{what.removesuffix('_ok')}_adherence": sum(s[what] for s in samples) / n,
            "prompt_adherence": sum(s["prompt_ok"] for s in samples) / n, "both": both / n,
            "time_s": seconds, "images_per_s": n / seconds if seconds > 0 else None,
            "sample_kwargs": dict(sample_kwargs), "samples": samples}


def evaluate_control(pipe, n: int = 200, seed: int = 0, control_type: str | None = None, progress: bool = False,
                     **sample_kwargs: Any) -> dict[str, Any]:
    """Generate n images, each from a fresh scene's caption and control map; score both adherences."""
    from tqdm.auto import tqdm

    size = pipe.image_size
    world = ShapesWorld(seed=WORLD_SEED_BASE + seed, num_samples=n, image_size=size)
    samples, seconds, best_of = [], 0.0, 1
    for i in tqdm(range(n), desc="control", unit="image", disable=not progress, leave=False):
        scene = world[i]
        picture = render(scene, size)
        start = time.perf_counter()
        image = pipe.generate(scene.caption, seed=_item_seed(seed, i), control_image=picture,
                              control_type=control_type, **sample_kwargs)[0]
        seconds += time.perf_counter() - start
        best_of = max(best_of, image.info.get("best_of", 1))  # drawn once, or the best of this many
        found = detect(image)
        samples.append({
            "prompt": scene.caption,
            "control_ok": Counter((d.shape, d.position) for d in found) == Counter((o.shape, o.position)
                                                                                    for o in scene.objects),
            "prompt_ok": Counter(d.composition for d in found) == Counter(o.composition for o in scene.objects),
            "detected": describe(found)})
    return _summary("control", samples, seconds, size, seed, "control_ok", sample_kwargs, best_of)


def evaluate_reference(pipe, n: int = 200, seed: int = 0, progress: bool = False,
                       **sample_kwargs: Any) -> dict[str, Any]:
    """Generate n images, each from a reference picture and a shapeless prompt; score both adherences."""
    from tqdm.auto import tqdm

    cfg = ShapesWorldConfig(seed=WORLD_SEED_BASE + seed, num_samples=n)
    samples, seconds, best_of = [], 0.0, 1
    for i in tqdm(range(n), desc="reference", unit="image", disable=not progress, leave=False):
        target, ref = reference_pair(cfg, i)
        picture = render(ref, max(REFERENCE_SIZE, pipe.image_size))
        start = time.perf_counter()
        image = pipe.generate(target.caption, seed=_item_seed(seed, i), reference_image=picture, **sample_kwargs)[0]
        seconds += time.perf_counter() - start
        best_of = max(best_of, image.info.get("best_of", 1))  # drawn once, or the best of this many
        found = detect(image)
        want = target.objects[0]
        one = found[0] if len(found) == 1 else None
        named_place = _WHERE[want.position] in target.caption
        samples.append({
            "prompt": target.caption, "reference": f"{ref.objects[0].colour} {ref.objects[0].shape}",
            "reference_ok": one is not None and one.shape == ref.objects[0].shape,
            "prompt_ok": one is not None and one.colour == want.colour
                         and (not named_place or one.position == want.position),
            "detected": describe(found)})
    return _summary("reference", samples, seconds, pipe.image_size, seed, "reference_ok", sample_kwargs, best_of)


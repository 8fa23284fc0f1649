"""Hallucination: what a model's descriptions of shapes-world scenes name that the scene does not hold.

Each of n fresh scenes (the VQA evaluator's world) is shown with "Describe the image."
and the answer read by `unimm.data.preference.mentions`. An object named with a colour
and shape the scene does not hold is a hallucinated object; a number that differs from
how many the scene holds is a wrong count. Reported, as CHAIR does for captions:

    hallucination_rate   descriptions with at least one hallucinated object or wrong count
    object_rate          hallucinated objects / objects named (CHAIR_i)
    count_error_rate     wrong counts / objects named with a number
    complete_rate        descriptions that name every object of the scene and nothing else
"""
from __future__ import annotations

import time
from typing import Any

from ..data.preference import mentions, scene_counts
from ..data.shapes import ShapesWorld, render
from .vqa import WORLD_SEED_BASE, _image_size

__all__ = ["QUESTION", "evaluate_hallucination", "judge"]

QUESTION = "Describe the image."


def judge(description: str, scene) -> dict[str, Any]:
    """What one description gets wrong about its scene."""
    truth = scene_counts(scene)
    named = mentions(description)
    hallucinated = [m for m in named if m.colour is not None and (m.colour, m.shape) not in truth]
    wrong_counts = [m for m in named if m.colour is not None and (m.colour, m.shape) in truth
                    and m.count is not None and m.count != truth[(m.colour, m.shape)]]
    said = {(m.colour, m.shape): m.count for m in named}
    complete = said.keys() == truth.keys() and all(c is None or c == truth[k] for k, c in said.items())
    return {"objects": len(named), "with_count": sum(m.count is not None for m in named),
            "hallucinated": [f"{m.colour} {m.shape}" for m in hallucinated],
            "wrong_counts": [f"{m.count} {m.colour} {m.shape}" for m in wrong_counts],
            "complete": complete}


def evaluate_hallucination(pipe: Any, n: int = 400, seed: int = 0, max_new_tokens: int = 32,
                           image_size: int | None = None, progress: bool = False, **chat_kwargs: Any) -> dict[str, Any]:
    """Describe n scenes with pipe.chat; the rates of the module docstring and each description."""
    from tqdm.auto import tqdm

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    size = _image_size(pipe, image_size)
    world = ShapesWorld(seed=WORLD_SEED_BASE + seed, num_samples=n)
    samples, seconds = [], 0.0
    for i in tqdm(range(n), desc="hallucination", unit="scene", disable=not progress, leave=False):
        scene = world[i]
        start = time.perf_counter()
        answer = pipe.chat(render(scene, size), QUESTION, max_new_tokens=max_new_tokens, **chat_kwargs)
        seconds += time.perf_counter() - start
        samples.append({"caption": scene.caption, "description": answer, **judge(answer, scene)})
    objects = sum(s["objects"] for s in samples)
    with_count = sum(s["with_count"] for s in samples)
    return {
        "task": "hallucination",
        "hallucination_rate": sum(bool(s["hallucinated"] or s["wrong_counts"]) for s in samples) / n,
        "object_rate": sum(len(s["hallucinated"]) for s in samples) / objects if objects else 0.0,
        "count_error_rate": sum(len(s["wrong_counts"]) for s in samples) / with_count if with_count else 0.0,
        "complete_rate": sum(s["complete"] for s in samples) / n,
        "num_scenes": n, "image_size": size, "world_seed": WORLD_SEED_BASE + seed, "seed": seed,
        "time_s": seconds, "samples": samples,
    }

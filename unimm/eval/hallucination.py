"""Hallucination: what a model's descriptions of shapes-world scenes name that the scene does not hold.

Each of n fresh scenes (the VQA evaluator's world) is shown with "Describe the image."
and the answer read by `unimm.data.preference.mentions`. An object named with a colour
and shape the scene does not hold is a hallucinated object; a number that differs from
how many the scene holds is a wrong count. Reported, as CHAIR does for captions:

    hallucination_rate   descriptions with at least one hallucinated object or wrong count
    object_rate          hallucinated objects / objects named (CHAIR_i)
    count_error_rate     objects of the scene named a wrong number of times / objects of the scene named
    complete_rate        descriptions that name every object of the scene and nothing else
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ..data.preference import mentions, scene_counts
from ..data.shapes import ShapesWorld, render
from .vqa import WORLD_SEED_BASE, _image_size

__all__ = ["QUESTION", "evaluate_hallucination", "judge"]

QUESTION = "Describe the image."


def judge(description: str, scene) -> dict[str, Any]:
    """What one description gets wrong about its scene: objects named with a colour and shape the
    scene does not hold, and objects it holds named a wrong number of times ("a red circle and a red
    circle" for one red circle, "three red circles" for two)."""
    truth = scene_counts(scene)
    named = mentions(description)
    said: Counter = Counter()
    for m in named:
        if m.colour is not None:
            said[(m.colour, m.shape)] += m.count or 1
    hallucinated = [m for m in named if m.colour is not None and (m.colour, m.shape) not in truth]
    wrong_counts = [f"{said[k]} {k[0]} {k[1]} (holds {truth[k]})" for k in said if k in truth and said[k] != truth[k]]
    return {"objects": len(named), "named_present": sum(k in truth for k in said),
            "hallucinated": [f"{m.colour} {m.shape}" for m in hallucinated], "wrong_counts": wrong_counts,
            "complete": said == truth and all(m.colour is not None for m in named)}


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
    present = sum(s["named_present"] for s in samples)
    return {
        "task": "hallucination",
        "hallucination_rate": sum(bool(s["hallucinated"] or s["wrong_counts"]) for s in samples) / n,
        "object_rate": sum(len(s["hallucinated"]) for s in samples) / objects if objects else 0.0,
        "count_error_rate": sum(len(s["wrong_counts"]) for s in samples) / present if present else 0.0,
        "complete_rate": sum(s["complete"] for s in samples) / n,
        "num_scenes": n, "image_size": size, "world_seed": WORLD_SEED_BASE + seed, "seed": seed,
        "time_s": seconds, "samples": samples,
    }

"""Understanding evaluation: questions about fresh shapes-world scenes, exact-match accuracy per type.

Scenes come from a world seeded WORLD_SEED_BASE + seed, far from the seeds the
training configs use (0-3), so they are new to the model. One question is
asked per scene, the question types taking turns (colour, shape, count,
position, size), so the per-type figures rest on equal numbers. Images are
rendered at the model's encoder input size (pass image_size to render larger).
"""
from __future__ import annotations

import random
import string
import time
from typing import Any

from ..data.shapes import QA, QA_TYPES, Scene, ShapesWorld, render

__all__ = ["WORLD_SEED_BASE", "evaluate_multi_image", "evaluate_vqa", "multi_image_items", "normalise_answer",
           "vqa_items"]

WORLD_SEED_BASE = 1_000_000  # eval world seed = WORLD_SEED_BASE + seed; training uses small seeds
DEFAULT_IMAGE_SIZE = 64  # when the pipe does not say what its encoder takes


def normalise_answer(text: str) -> str:
    """Case-folded, stripped, trailing punctuation removed: 'Red.' -> 'red'."""
    return text.strip().lower().rstrip(string.punctuation + string.whitespace)


def vqa_items(n: int, seed: int = 0) -> list[tuple[Scene, QA]]:
    """n (scene, question) pairs from distinct scenes, question types in turn; a pure function of (n, seed)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    world = ShapesWorld(seed=WORLD_SEED_BASE + seed, num_samples=10 * n + 100)
    rng = random.Random(f"unimm-vqa/{seed}")
    items: list[tuple[Scene, QA]] = []
    index = 0
    while len(items) < n:
        want = QA_TYPES[len(items) % len(QA_TYPES)]
        scene = world[index]
        index += 1
        # Scenes of identical copies have no position question: move on to the next scene.
        candidates = [q for q in scene.qa if q.type == want]
        if candidates:
            items.append((scene, rng.choice(candidates)))
    return items


def _encoder_size(pipe: Any) -> int | None:
    size = getattr(getattr(getattr(pipe, "model", None), "encoder", None), "image_size", None)
    return size if isinstance(size, int) else None


def evaluate_vqa(pipe: Any, n: int = 400, seed: int = 0, max_new_tokens: int = 8, image_size: int | None = None,
                 progress: bool = False, **chat_kwargs: Any) -> dict[str, Any]:
    """Ask pipe.chat(image, question) n questions; exact-match accuracy per question type and overall.

    Works with anything that has `chat(image, question, max_new_tokens=, **chat_kwargs) -> str`.
    Returns {"accuracy", "types": {type: {accuracy, correct, n}}, "num_questions",
    "image_size", "world_seed", "time_s", "questions_per_s", "samples": per
    question {question, answer, prediction, type, correct, scene}}. Also "scenes": per scene
    kind (single, counting, pair) {correct, n, types: {type: {correct, n}}}: a question about
    one of two objects ("What colour is the circle?" beside a square) needs the model to bind
    each attribute to its object, which the single-object ones do not.
    """
    size = _image_size(pipe, image_size)
    result = _ask(pipe, [([scene], qa) for scene, qa in vqa_items(n, seed)], QA_TYPES, size, max_new_tokens,
                  progress, "vqa", chat_kwargs)
    return {"task": "vqa", **result, "scenes": by_scene(result["samples"]), "seed": seed,
            "world_seed": WORLD_SEED_BASE + seed}


def by_scene(samples: list[dict]) -> dict[str, dict]:
    """Questions' results grouped by their scene's kind, and within it by question type."""
    out: dict[str, dict] = {}
    for s in samples:
        kind = out.setdefault(s["scene"], {"correct": 0, "n": 0, "types": {}})
        t = kind["types"].setdefault(s["type"], {"correct": 0, "n": 0})
        for group in (kind, t):
            group["correct"] += int(s["correct"])
            group["n"] += 1
    return out


def multi_image_items(n: int, seed: int = 0, frames: int = 4) -> list[tuple[list[Scene], QA]]:
    """n (scenes, question) pairs of several images each (`unimm.data.sequences`), the types of
    SEQUENCE_TYPES in turn: two scenes to compare, or the frames of a clip; a pure function of (n, seed)."""
    from ..data.sequences import SEQUENCE_TYPES, clip_item, compare_item

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    world = ShapesWorld(seed=WORLD_SEED_BASE + seed, num_samples=20 * n + 100)
    rng = random.Random(f"unimm-multi-image/{seed}")
    items: list[tuple[list[Scene], QA]] = []
    index = 0
    while len(items) < n:
        want = SEQUENCE_TYPES[len(items) % len(SEQUENCE_TYPES)]
        scenes, qa = clip_item(world.config, index, frames) if want == "motion" else compare_item(world, index)
        index += 1
        candidates = [q for q in qa if q.type == want]
        if candidates:
            items.append((scenes, rng.choice(candidates)))
    return items


def evaluate_multi_image(pipe: Any, n: int = 400, seed: int = 0, max_new_tokens: int = 8, frames: int = 4,
                         image_size: int | None = None, progress: bool = False, **chat_kwargs: Any) -> dict[str, Any]:
    """Questions over several images (two scenes to compare, the frames of a clip), asked with
    pipe.chat(images, question); exact-match accuracy per type, as evaluate_vqa reports."""
    from ..data.sequences import SEQUENCE_TYPES

    size = _image_size(pipe, image_size)
    return {"task": "multi_image", **_ask(pipe, multi_image_items(n, seed, frames), SEQUENCE_TYPES, size,
                                          max_new_tokens, progress, "multi-image", chat_kwargs),
            "seed": seed, "world_seed": WORLD_SEED_BASE + seed, "frames": frames}


def _image_size(pipe: Any, image_size: int | None) -> int:
    encoder = _encoder_size(pipe)
    size = image_size or encoder or DEFAULT_IMAGE_SIZE
    if encoder is not None and size < encoder:
        raise ValueError(f"image_size {size} is below the model's encoder input size {encoder}")
    return size


def _ask(pipe: Any, items: list[tuple[list[Scene], QA]], types, size: int, max_new_tokens: int, progress: bool,
         desc: str, chat_kwargs: dict) -> dict[str, Any]:
    """Ask every question about its scenes, rendered at `size`; accuracies per type and overall."""
    from tqdm.auto import tqdm

    from ..data.sequences import CLIP_TYPES

    samples = []
    seconds = 0.0
    for scenes, qa in tqdm(items, desc=desc, unit="q", disable=not progress, leave=False):
        images = [render(scene, size) for scene in scenes]
        start = time.perf_counter()
        if qa.type in CLIP_TYPES:  # a clip's frames, read as the model reads video
            prediction = pipe.chat(None, qa.question, video=images, max_new_tokens=max_new_tokens, **chat_kwargs)
        else:  # one image as itself: evaluate_vqa takes anything with chat(image, question)
            prediction = pipe.chat(images[0] if len(images) == 1 else images, qa.question,
                                   max_new_tokens=max_new_tokens, **chat_kwargs)
        seconds += time.perf_counter() - start
        samples.append({"question": qa.question, "answer": qa.answer, "prediction": prediction, "type": qa.type,
                        "correct": normalise_answer(prediction) == normalise_answer(qa.answer),
                        "scene": scenes[0].kind if len(scenes) == 1 else None})
    per_type = {}
    for t in types:
        results = [s["correct"] for s in samples if s["type"] == t]
        if results:
            per_type[t] = {"accuracy": sum(results) / len(results), "correct": sum(results), "n": len(results)}
    correct = sum(s["correct"] for s in samples)
    return {
        "accuracy": correct / len(samples),  # over questions; the types are balanced
        "correct": correct,
        "types": per_type,
        "num_questions": len(samples),
        "image_size": size,
        "time_s": seconds,
        "questions_per_s": len(samples) / seconds if seconds > 0 else None,
        "samples": samples,
    }

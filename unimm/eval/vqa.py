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

__all__ = ["WORLD_SEED_BASE", "evaluate_vqa", "normalise_answer", "vqa_items"]

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
    question {question, answer, prediction, type, correct}}.
    """
    from tqdm.auto import tqdm

    encoder = _encoder_size(pipe)
    size = image_size or encoder or DEFAULT_IMAGE_SIZE
    if encoder is not None and size < encoder:
        raise ValueError(f"image_size {size} is below the model's encoder input size {encoder}")
    items = vqa_items(n, seed)
    samples = []
    seconds = 0.0
    for scene, qa in tqdm(items, desc="vqa", unit="q", disable=not progress, leave=False):
        image = render(scene, size)
        start = time.perf_counter()
        prediction = pipe.chat(image, qa.question, max_new_tokens=max_new_tokens, **chat_kwargs)
        seconds += time.perf_counter() - start
        samples.append({"question": qa.question, "answer": qa.answer, "prediction": prediction, "type": qa.type,
                        "correct": normalise_answer(prediction) == normalise_answer(qa.answer)})

    types = {}
    for t in QA_TYPES:
        results = [s["correct"] for s in samples if s["type"] == t]
        if results:
            types[t] = {"accuracy": sum(results) / len(results), "correct": sum(results), "n": len(results)}
    correct = sum(s["correct"] for s in samples)
    return {
        "task": "vqa",
        "accuracy": correct / len(samples),  # over questions; the types are balanced
        "correct": correct,
        "types": types,
        "num_questions": len(samples),
        "image_size": size,
        "world_seed": WORLD_SEED_BASE + seed,
        "time_s": seconds,
        "questions_per_s": len(samples) / seconds if seconds > 0 else None,
        "seed": seed,
        "samples": samples,
    }

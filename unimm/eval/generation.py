"""Text-to-image evaluation: generate the benchmark prompts, detect, score (GenEval-style).

`evaluate_generation(pipe, ...)` works with anything that has the pipeline's
`generate(prompts, num_images=, seed=, batch_size=, **options) -> [PIL images]`,
so the image source can be swapped: a real model, or `oracle.OraclePipe`
(ground truth) to check the evaluator itself.

Scoring is strict: an image passes when the detector finds exactly the
objects its prompt asks for (colour and shape; the region for position
prompts; the number for counting prompts) and nothing else. The shapes world
never adds distractors, so an extra object is a mistake. Size is not scored.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from .detector import MIN_RELIABLE_SIZE, Detection, describe, detect
from .prompts import CATEGORIES, EvalPrompt, make_prompts

__all__ = ["evaluate_generation", "save_grid", "score"]


def _name(colour: str, shape: str | None, count: int = 1) -> str:
    return f"{count} x {colour} {shape or 'blob'}"


def score(prompt: EvalPrompt, detections: Sequence[Detection]) -> tuple[bool, str]:
    """(passes, why not) for one image's detections against its prompt; the reason is '' on a pass."""
    want = Counter({(e.colour, e.shape): e.count for e in prompt.objects})
    got = Counter((d.colour, d.shape) for d in detections)
    problems = []
    for (colour, shape), n in want.items():
        if got[(colour, shape)] != n:
            problems.append(f"want {_name(colour, shape, n)}, found {got[(colour, shape)]}")
    for (colour, shape), n in got.items():
        if (colour, shape) not in want:
            problems.append(f"extra {_name(colour, shape, n)}")
    for e in prompt.objects:
        if e.position is None:
            continue
        wrong = [d.position or "corner" for d in detections
                 if (d.colour, d.shape) == (e.colour, e.shape) and d.position != e.position]
        if wrong:
            problems.append(f"{e.colour} {e.shape} at {', '.join(wrong)}, want {e.position}")
    return not problems, "; ".join(problems)


def _batch_seed(seed: int, index: int) -> int:
    """Distinct, reproducible sampling seed per batch (batch b of seed s never equals batch b' of seed s')."""
    return (seed * 1_000_003 + index) % 2**63


def evaluate_generation(pipe: Any, n_per_category: int = 100, seed: int = 0, images_per_prompt: int = 1,
                        batch_size: int = 32, grid: str | Path | None = None, grid_max: int = 64,
                        progress: bool = False, warmup: bool = True, **sample_kwargs: Any) -> dict[str, Any]:
    """Generate images for make_prompts(n_per_category, seed), detect objects, score them.

    sample_kwargs (guidance_scale, temperature, steps, ...) go to pipe.generate.
    Returns {"accuracy" (mean over categories), "categories": {name: {accuracy,
    correct, n}}, "num_prompts", "num_images", "image_size", "detector_reliable",
    "time_s" and "images_per_s" (sampling only), "samples": per image
    {prompt, category, correct, reason, detected}, ...}. With `grid`, a PNG of
    up to grid_max results (a green frame: pass, red: fail) is saved there.
    With `warmup`, one untimed image is generated first, so one-off start-up
    costs (kernel selection, allocator growth) do not count as sampling time;
    each batch has its own seed, so this does not change the images.
    """
    from tqdm.auto import tqdm

    if not isinstance(images_per_prompt, int) or images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be an int >= 1, got {images_per_prompt!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    prompts = make_prompts(n_per_category, seed)
    per_call = max(1, batch_size // images_per_prompt)  # whole prompts per generate() call
    batches = [prompts[i:i + per_call] for i in range(0, len(prompts), per_call)]

    if warmup:
        pipe.generate([prompts[0].text], num_images=1, seed=seed, batch_size=1, **sample_kwargs)
    images: list[Image.Image] = []
    seconds = 0.0
    for b, batch in enumerate(tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False)):
        start = time.perf_counter()
        out = pipe.generate([p.text for p in batch], num_images=images_per_prompt, seed=_batch_seed(seed, b),
                            batch_size=batch_size, **sample_kwargs)
        seconds += time.perf_counter() - start
        if len(out) != len(batch) * images_per_prompt:
            raise RuntimeError(f"generate returned {len(out)} images for {len(batch)} prompts x {images_per_prompt}")
        images += out

    samples, marks = [], []
    for i, image in enumerate(images):
        prompt = prompts[i // images_per_prompt]
        found = detect(image)
        ok, reason = score(prompt, found)
        marks.append(ok)
        samples.append({"prompt": prompt.text, "category": prompt.category, "correct": ok,
                        "reason": reason, "detected": describe(found)})

    categories = {}
    for cat in CATEGORIES:
        results = [s["correct"] for s in samples if s["category"] == cat]
        categories[cat] = {"accuracy": sum(results) / len(results), "correct": sum(results), "n": len(results)}
    side = min(images[0].size) if images else 0
    report = {
        "task": "generation",
        # GenEval's overall score: the mean over categories (equal-sized here, so also the mean over images).
        "accuracy": sum(c["accuracy"] for c in categories.values()) / len(categories),
        "categories": categories,
        "num_prompts": len(prompts),
        "images_per_prompt": images_per_prompt,
        "num_images": len(images),
        "image_size": list(images[0].size) if images else None,
        "detector_reliable": side >= MIN_RELIABLE_SIZE,
        "time_s": seconds,
        "images_per_s": len(images) / seconds if seconds > 0 else None,
        # Candidates drawn per image (the pipeline's best-of-N; 1 when it kept every image it drew).
        "best_of": images[0].info.get("best_of", 1) if images else 1,
        "seed": seed,
        "sample_kwargs": {k: v for k, v in sample_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "samples": samples,
    }
    if grid is not None:
        picks = _grid_picks(samples, grid_max)
        save_grid(grid, [images[i] for i in picks], [marks[i] for i in picks])
        report["grid"] = str(grid)
    return report


def _grid_picks(samples: list[dict], limit: int) -> list[int]:
    """Indices of up to `limit` results, the same number from each category, in order."""
    per_cat = max(1, limit // len(CATEGORIES))
    picks = []
    for cat in CATEGORIES:
        picks += [i for i, s in enumerate(samples) if s["category"] == cat][:per_cat]
    return picks[:limit]


def save_grid(path: str | Path, images: Sequence[Image.Image], passed: Sequence[bool],
              cell: int = 64, columns: int = 8) -> Path:
    """Tile images (nearest-neighbour upscaled to `cell` px) with a green (pass) or red (fail) frame."""
    if not images:
        raise ValueError("no images to put in a grid")
    frame = max(2, cell // 24)
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    pitch = cell + 2 * frame
    sheet = Image.new("RGB", (columns * pitch, rows * pitch), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (image, ok) in enumerate(zip(images, passed)):
        x, y = (k % columns) * pitch, (k // columns) * pitch
        draw.rectangle((x, y, x + pitch - 1, y + pitch - 1), fill=(40, 170, 60) if ok else (210, 30, 30))
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x + frame, y + frame))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

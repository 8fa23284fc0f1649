"""Several images in one question (LLaVA-OneVision's interleaved data) from the shapes world.

Two kinds of item, each a pure function of (seed, index) like the world's scenes:

  compare  two scenes one after the other ("<image>\\n<image>\\n" then the question):
           "Which image has more objects?", "Which image has more circles?",
           "Which image shows a red circle?" -> "first" | "second"
           (asked only where exactly one image is the answer)
  clip     `frames` frames of one object moving in a straight line (a short video):
           "Which way does the red circle move?" -> "left" | "right" | "up" | "down"

`SEQUENCE_TYPES` names the question types, which the multi-image evaluator reports
apart. A clip renders to a list of PIL frames, which `unimm.images.load_frames`
also reads back from a GIF.
"""
from __future__ import annotations

import hashlib
import random

from .corpus import SIZES
from .shapes import BORDER, QA, RADIUS, Obj, Scene, ShapesWorld, ShapesWorldConfig, _a_an, position_of, render

__all__ = ["SEQUENCES", "SEQUENCE_TYPES", "CLIP_TYPES", "DIRECTIONS", "clip_item", "compare_item", "sequence_record"]

SEQUENCES = ("compare", "clip")
SEQUENCE_TYPES = ("more_objects", "more_shape", "shows", "motion")
CLIP_TYPES = ("motion",)  # the question types asked about a clip's frames (a video), not separate images
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ORDINALS = ("first", "second")
MIN_TRAVEL = 0.35  # how far a clip's object moves, at least (normalised): a few object widths


def _rng(kind: str, seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"{kind}/{seed}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def compare_item(world: ShapesWorld, index: int) -> tuple[list[Scene], list[QA]]:
    """Scene 2*index of `world` and the next scene after it that differs from it in an asked respect
    (modulo the world's length), and the questions that tell them apart."""
    n = len(world)
    a = world[(2 * index) % n]
    for k in range(1, n):
        b = world[(2 * index + k) % n]
        qa = _compare_questions(a, b, _rng("compare", world.config.seed, index))
        if qa:
            return [a, b], qa
    raise ValueError(f"no scene of the world differs from scene {(2 * index) % n}: nothing to compare")


def _compare_questions(a: Scene, b: Scene, rng: random.Random) -> list[QA]:
    def which(x: int, y: int) -> str | None:
        return None if x == y else ORDINALS[0] if x > y else ORDINALS[1]

    qa = []
    if answer := which(len(a.objects), len(b.objects)):
        qa.append(QA("Which image has more objects?", answer, "more_objects"))
    shape = rng.choice(sorted({o.shape for o in a.objects + b.objects}))
    count = lambda s: sum(o.shape == shape for o in s.objects)
    if answer := which(count(a), count(b)):
        qa.append(QA(f"Which image has more {shape}s?", answer, "more_shape"))
    in_a, in_b = {o.composition for o in a.objects}, {o.composition for o in b.objects}
    if only := sorted(in_a ^ in_b):
        colour, shape = rng.choice(only)
        qa.append(QA(f"Which image shows a {colour} {shape}?", ORDINALS[0] if (colour, shape) in in_a else ORDINALS[1],
                     "shows"))
    rng.shuffle(qa)
    return [q._replace(question=_a_an(q.question)) for q in qa]


def clip_item(config: ShapesWorldConfig, index: int, frames: int) -> tuple[list[Scene], list[QA]]:
    """`frames` scenes of one object moving in a straight line, and the question of where it goes."""
    if not isinstance(frames, int) or frames < 2:
        raise ValueError(f"a clip needs frames >= 2, got {frames!r}")
    rng = _rng("clip", config.seed, index)
    colour, shape = rng.choice(config.compositions())
    size = rng.choice(SIZES)
    r = RADIUS[size]
    direction = rng.choice(list(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    lo, hi = r + BORDER, 1 - r - BORDER
    travel = rng.uniform(MIN_TRAVEL, hi - lo)
    start = rng.uniform(lo, hi - travel)  # along the motion, moving towards larger values
    cross = rng.uniform(lo, hi)  # across it, fixed
    along = [start + travel * k / (frames - 1) for k in range(frames)]
    if dx < 0 or dy < 0:
        along.reverse()
    scenes = []
    for t in along:
        x, y = (t, cross) if dx else (cross, t)
        obj = Obj(shape, colour, size, position_of(x, y) or "corner", round(x, 4), round(y, 4), r)
        scenes.append(Scene("single", [obj], _a_an(f"a {size} {colour} {shape}"), []))
    question = _a_an(f"Which way does the {colour} {shape} move?")
    return scenes, [QA(question, direction, "motion")]


def sequence_record(kind: str, world: ShapesWorld, index: int, size: int, frames: int = 4) -> dict:
    """A training record (task "understanding") of `kind` for item `index`: its images rendered at
    `size` and all its questions as turns, the images' placeholders before the first one."""
    if kind == "compare":
        scenes, qa = compare_item(world, index)
    elif kind == "clip":
        scenes, qa = clip_item(world.config, index, frames)
    else:
        raise ValueError(f"unknown sequence {kind!r}; choose one of {', '.join(SEQUENCES)}")
    lead = "".join("<image>\n" for _ in scenes)
    turns = [((lead if k == 0 else "") + q.question, q.answer) for k, q in enumerate(qa)]
    record = {"task": "understanding", "images": [render(s, size, world.config.antialias) for s in scenes],
              "turns": turns}
    if kind == "clip":
        record["frames"] = True  # its images are a video's frames (read within the model's frame budget)
    return record

"""Preference pairs for the DPO stage: an image, a question, a chosen and a rejected answer.

Records (what a preference source's `get(i)` returns):

    {"task": "preference", "images": [PIL RGB, ...], "question": str, "chosen": str, "rejected": str}

Two sources make them:
- `PreferenceJsonlSource`: a JSON list or JSONL file of
  {"image": path | [paths] | absent, "question": str, "chosen": str, "rejected": str}
  (RLHF-V / LLaVA-RLHF style pairs; "prompt" is accepted for "question", and
  "<image>" placeholders as in LLaVA data);
- the shapes world (`{format: shapes, task: preference}`), whose rejected answers are
  the mistakes a model makes about a scene, drawn by `rejected_answer`: a description
  that names an object the scene does not hold (one object's colour or shape changed to
  a pair absent from the scene, a hallucinated object) or a wrong number, and a one-word
  answer of the right kind with the wrong value.

`mentions` reads the objects a shapes-world description names; the hallucination
evaluator (`unimm.eval.hallucination`) scores a model's descriptions with it.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from typing import NamedTuple

from .corpus import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES
from .shapes import QA, Scene, _a_an

__all__ = ["Mention", "hallucinated_caption", "mentions", "rejected_answer", "scene_counts"]

# One-word answers: the values a wrong answer of each question type is drawn from.
_VALUES = {"colour": COLOURS, "shape": SHAPES, "position": POSITIONS, "size": SIZES, "count": COUNTS}


def rejected_answer(scene: Scene, qa: QA, rng: random.Random) -> str:
    """A wrong answer to `qa` about `scene`: a hallucinating description for a caption
    request, else another value of the answer's kind."""
    if qa.type == "caption":
        return hallucinated_caption(scene, rng)
    values = [v for v in _VALUES[qa.type] if v != qa.answer]
    return rng.choice(values)


def _word(word: str) -> re.Pattern:
    """`word` as a whole word, plural included ("circle" matches "circles")."""
    return re.compile(rf"\b{re.escape(word)}(?=s?\b)")


def hallucinated_caption(scene: Scene, rng: random.Random) -> str:
    """The scene's caption with one mistake: an object named with a colour or shape that makes a
    (colour, shape) pair the scene does not hold; in scenes of two or three copies, a wrong count;
    in pair scenes also the first object named twice (the mistake small models make most)."""
    present = {o.composition for o in scene.objects}
    obj = rng.choice(scene.objects)
    options = [("colour", c) for c in COLOURS if (c, obj.shape) not in present]
    options += [("shape", s) for s in SHAPES if (obj.colour, s) not in present]
    n = len(scene.objects)
    if scene.kind == "counting" and n > 1:  # "two red circles" -> "three red circles" (never "one ... circles")
        options += [("count", c) for c in COUNTS[1:] if c != COUNTS[n - 1]]
    if scene.kind == "pair":  # the first object named twice, the second left out
        options += [("repeat", None)] * 4
    kind, value = rng.choice(options)
    if kind == "repeat":
        first, second = scene.objects
        head, tail = scene.caption.split(" and ", 1)
        for old, new in ((second.colour, first.colour), (second.shape, first.shape)):
            tail = _word(old).sub(new, tail, count=1)
        return _articles(f"{head} and {tail}")
    old = {"colour": obj.colour, "shape": obj.shape, "count": COUNTS[n - 1]}[kind]
    new, count = _word(old).subn(value, scene.caption, count=1)
    if not count:  # every caption template names each object's colour, shape and (counting) number
        raise ValueError(f"caption {scene.caption!r} does not name {old!r}")
    return _articles(new)


def _articles(text: str) -> str:
    """"an" before a consonant and "a" before a vowel put right after a word was changed."""
    return _a_an(re.sub(r"\ban(?= [^aeiou\W])", "a", text))


class Mention(NamedTuple):
    """An object a description names: its colour (None when not said), shape and count (None: not said)."""

    colour: str | None
    shape: str
    count: int | None


_TOKEN = re.compile(r"[a-z]+")
_SHAPE_OF = {**{s: s for s in SHAPES}, **{s + "s": s for s in SHAPES}}
_COUNT_OF = {w: k + 1 for k, w in enumerate(COUNTS)}
_WINDOW = 3  # a shape's colour and count stand at most this many words before it ("two small red circles")


def mentions(text: str) -> list[Mention]:
    """The objects a shapes-world description names, in order: each shape word with the colour and
    number words just before it. "a small red circle and two blue stars" ->
    [Mention("red", "circle", 1), Mention("blue", "star", 2)] ("a"/"an" count as one)."""
    words = _TOKEN.findall(text.lower())
    out = []
    for i, w in enumerate(words):
        if w not in _SHAPE_OF:
            continue
        before = words[max(0, i - _WINDOW):i]
        last_shape = max((k for k, b in enumerate(before) if b in _SHAPE_OF), default=-1)
        before = before[last_shape + 1:]  # never reach back past the previous object
        colour = next((b for b in reversed(before) if b in COLOURS), None)
        count = next((_COUNT_OF[b] for b in reversed(before) if b in _COUNT_OF), None)
        if count is None and any(b in ("a", "an") for b in before):
            count = 1
        out.append(Mention(colour, _SHAPE_OF[w], count))
    return out


def scene_counts(scene: Scene) -> Counter:
    """(colour, shape) -> how many the scene holds."""
    return Counter(o.composition for o in scene.objects)

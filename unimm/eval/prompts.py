"""The fixed, seeded prompt set of the generation benchmark (GenEval-style, for the shapes world).

Four categories, each prompt paired with what its image must contain:

  single       "a small red circle"            one red circle, nothing else
  position     "a blue square on the left"     one blue square, in the left region, nothing else
  counting     "two green triangles"           exactly two green triangles, nothing else
  two_objects  "a red circle and a yellow star"  one red circle and one yellow star, nothing else

Every prompt is one of the shapes world's own caption templates, filled in the
way the world fills it (natural prepositions, "an orange ..."), so a model
trained on shapes-world captions has seen the phrasing. A single object is
prompted as "a {size} {colour} {shape}" because that is the world's only
single-object caption with neither a position nor "there is"/"a picture of";
the size is stated but, as in GenEval, not scored. Counting uses two and
three (one is the single category); two_objects pairs differ in both colour
and shape, as the world's pair scenes do.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..data import shapes
from ..data.corpus import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES

__all__ = ["CATEGORIES", "EvalPrompt", "Expected", "make_prompts", "parse_prompt"]

CATEGORIES = ("single", "position", "counting", "two_objects")
COUNTING_COUNTS = (2, 3)

# The world's caption templates used here; an assertion keeps them in step with shapes.py.
_TEMPLATES = {
    "single": "a {size} {colour} {shape}",
    "position": "a {colour} {shape} {where}",
    "counting": "{count} {colour} {noun}",
    "two_objects": "a {colour} {shape} and a {colour2} {shape2}",
}
assert _TEMPLATES["single"] in shapes._SINGLE_CAPTIONS
assert _TEMPLATES["position"] in shapes._SINGLE_CAPTIONS
assert _TEMPLATES["counting"] in shapes._COUNTING_CAPTIONS
assert _TEMPLATES["two_objects"] in shapes._PAIR_CAPTIONS
_WHERE: dict[str, str] = dict(shapes._WHERE)  # "left" -> "on the left", "top" -> "at the top", ...


@dataclass(frozen=True)
class Expected:
    """`count` objects of this colour and shape (in `position` when it is set)."""

    colour: str
    shape: str
    count: int = 1
    position: str | None = None


@dataclass(frozen=True)
class EvalPrompt:
    category: str  # one of CATEGORIES
    text: str
    objects: tuple[Expected, ...]  # the image must hold exactly these objects
    size: str | None = None  # stated in single prompts; not scored


def _a_an(text: str) -> str:
    return shapes._a_an(text)


def _cycle(rng: random.Random, items: Sequence) -> Iterator:
    """Items in shuffled rounds: every item once per round, so any prefix is balanced to within one round."""
    while True:
        batch = list(items)
        rng.shuffle(batch)
        yield from batch


def _single(rng: random.Random, n: int) -> list[EvalPrompt]:
    shape_, colour_, size_ = _cycle(rng, SHAPES), _cycle(rng, COLOURS), _cycle(rng, SIZES)
    out = []
    for _ in range(n):
        s, c, z = next(shape_), next(colour_), next(size_)
        out.append(EvalPrompt("single", _a_an(_TEMPLATES["single"].format(size=z, colour=c, shape=s)),
                              (Expected(c, s),), size=z))
    return out


def _position(rng: random.Random, n: int) -> list[EvalPrompt]:
    shape_, colour_, where_ = _cycle(rng, SHAPES), _cycle(rng, COLOURS), _cycle(rng, POSITIONS)
    out = []
    for _ in range(n):
        s, c, p = next(shape_), next(colour_), next(where_)
        text = _a_an(_TEMPLATES["position"].format(colour=c, shape=s, where=_WHERE[p]))
        out.append(EvalPrompt("position", text, (Expected(c, s, position=p),)))
    return out


def _counting(rng: random.Random, n: int) -> list[EvalPrompt]:
    shape_, colour_, count_ = _cycle(rng, SHAPES), _cycle(rng, COLOURS), _cycle(rng, COUNTING_COUNTS)
    out = []
    for _ in range(n):
        s, c, k = next(shape_), next(colour_), next(count_)
        text = _TEMPLATES["counting"].format(count=COUNTS[k - 1], colour=c, noun=s + "s")
        out.append(EvalPrompt("counting", text, (Expected(c, s, count=k),)))
    return out


def _two_objects(rng: random.Random, n: int) -> list[EvalPrompt]:
    shape_, colour_ = _cycle(rng, SHAPES), _cycle(rng, COLOURS)
    out = []
    for _ in range(n):
        s, c = next(shape_), next(colour_)
        s2 = rng.choice([x for x in SHAPES if x != s])
        c2 = rng.choice([x for x in COLOURS if x != c])
        text = _a_an(_TEMPLATES["two_objects"].format(colour=c, shape=s, colour2=c2, shape2=s2))
        out.append(EvalPrompt("two_objects", text, (Expected(c, s), Expected(c2, s2))))
    return out


_MAKERS = {"single": _single, "position": _position, "counting": _counting, "two_objects": _two_objects}


def make_prompts(n_per_category: int = 100, seed: int = 0) -> list[EvalPrompt]:
    """n_per_category prompts of each category, category by category; a pure function of its arguments.

    Within a category, shapes, colours (and positions, counts, sizes) come in
    shuffled rounds, so per-shape and per-colour figures are balanced.
    """
    if not isinstance(n_per_category, int) or isinstance(n_per_category, bool) or n_per_category < 1:
        raise ValueError(f"n_per_category must be an int >= 1, got {n_per_category!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    # One RNG per category: adding prompts to one category never changes another.
    return [p for i, cat in enumerate(CATEGORIES)
            for p in _MAKERS[cat](random.Random(f"unimm-eval/{seed}/{i}"), n_per_category)]


# --------------------------------------------------------------------------- parsing

_C, _S = "|".join(COLOURS), "|".join(SHAPES)
_WHERE_TO_POSITION = {v: k for k, v in _WHERE.items()}
_PATTERNS = {
    "two_objects": re.compile(rf"an? ({_C}) ({_S}) and an? ({_C}) ({_S})"),
    "position": re.compile(rf"an? ({_C}) ({_S}) ({'|'.join(_WHERE_TO_POSITION)})"),
    "counting": re.compile(rf"({'|'.join(COUNTS)}) ({_C}) ({_S})s?"),
    "single": re.compile(rf"an? (?:({'|'.join(SIZES)}) )?({_C}) ({_S})"),
}


def parse_prompt(text: str) -> EvalPrompt | None:
    """The EvalPrompt a prompt text of one of the four forms stands for; None for any other text."""
    t = " ".join(text.lower().split()).rstrip(".")
    if m := _PATTERNS["two_objects"].fullmatch(t):
        c, s, c2, s2 = m.groups()
        return EvalPrompt("two_objects", text, (Expected(c, s), Expected(c2, s2)))
    if m := _PATTERNS["position"].fullmatch(t):
        c, s, where = m.groups()
        return EvalPrompt("position", text, (Expected(c, s, position=_WHERE_TO_POSITION[where]),))
    if m := _PATTERNS["counting"].fullmatch(t):
        k, c, s = m.groups()
        return EvalPrompt("counting", text, (Expected(c, s, count=COUNTS.index(k) + 1),))
    if m := _PATTERNS["single"].fullmatch(t):
        z, c, s = m.groups()
        return EvalPrompt("single", text, (Expected(c, s),), size=z)
    return None

"""Shapes world: a seeded synthetic dataset of simple coloured shapes.

The default data for examples, tests, training and the automatic evaluator.
Each scene holds 1-3 objects (circle, square, triangle, star, diamond,
hexagon) in fixed palette colours on a plain grey background, with a caption
and single-word question-answer pairs. Everything is a pure function of
(config, index), so `world[i]` is the same scene in any process, in any
access order, and `render(scene, size)` draws it at any resolution.

Three scene kinds:
  single    one object:                   "a small red circle on the left"
  counting  1-3 copies of one object:     "two red circles"
  pair      two objects that differ in
            both colour and shape:        "a red circle on the left and a blue square on the right"

Geometry is normalised: x grows to the right, y grows downwards, both in [0, 1];
an object's (cx, cy) is its centroid and r the radius of the circle that
contains it, so spacing checks on circles hold for every shape.
"""
from __future__ import annotations


import hashlib
import io
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from PIL import Image, ImageDraw

from ..config import ConfigError
from .corpus import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES

__all__ = [
    "BACKGROUND_RGB", "COLOUR_RGB", "QA", "QA_TYPES", "SCENE_KINDS", "Obj", "Scene",
    "ShapesWorld", "ShapesWorldConfig", "make_scene", "position_of", "render",
    "write_caption_jsonl", "write_llava_json",
]

# Saturated, fixed colours, at least ~110 apart (Euclidean RGB) from each other
# and from the background, so nearest-palette-colour classification of a pixel
# is unambiguous. Red/orange/yellow lie on one hue line; they are pushed apart
# in the green channel.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (205, 25, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "yellow": (250, 230, 40),
    "purple": (135, 40, 185),
    "orange": (250, 125, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
# Light-ish grey: it is none of the object colours, has no hue (so chroma alone
# separates it from every chromatic object) and its lightness sits well between
# black and white (85+ per channel from each). A colour-segmentation detector
# can therefore split objects from the background and from each other; >= 135
# RGB distance from every object colour.
BACKGROUND_RGB: tuple[int, int, int] = (170, 170, 170)
assert set(COLOUR_RGB) == set(COLOURS), "palette must cover corpus.COLOURS"

SCENE_KINDS = ("single", "counting", "pair")
MENTION_ORDERS = ("any", "raster")  # ShapesWorldConfig.mention_order
# A QA pair is tagged with the kind of its answer: every answer is one word of
# the matching vocabulary (COLOURS, SHAPES, COUNTS, POSITIONS, SIZES), so
# exact-match evaluation works and scores can be broken down by type.
QA_TYPES = ("colour", "shape", "count", "position", "size")

# Layout constants, all in normalised units (fractions of the image side).
RADIUS = {"small": 0.09, "large": 0.14}  # large/small ~1.55x: clearly different even at 32 px
GAP = 0.08  # free space between two objects' enclosing circles: ~2.5 px at 32 px, so
#            anti-aliased edges of neighbours never touch and connected components stay apart
BORDER = 0.04  # free space between an enclosing circle and the image border
CLEARANCE = 0.05  # a centroid stays this far inside its region's cell: "clearly" in that region
SUPERSAMPLE = 4  # anti-aliasing: draw at 4x and box-downsample (edge pixels blend with the background)
_MAX_LAYOUT_TRIES = 200

# Positions are cells of a 3x3 grid (column, row); the four corners have no name.
_REGION_CELL: dict[str, tuple[int, int]] = {
    "left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "centre": (1, 1),
}
_CELL_REGION = {cell: name for name, cell in _REGION_CELL.items()}
assert set(_REGION_CELL) == set(POSITIONS)
_WHERE = {  # natural prepositions: "at the top", not "on the top"
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "centre": "in the centre",
}

Composition = tuple[str, str]  # (colour, shape)


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str  # "small" | "large"
    position: str  # the region of POSITIONS that (cx, cy) lies in
    cx: float  # centroid, normalised
    cy: float
    r: float  # radius of the enclosing circle, normalised

    @property
    def composition(self) -> Composition:
        return (self.colour, self.shape)


class QA(NamedTuple):
    question: str
    answer: str  # a single vocabulary word; for type "caption", the scene's caption
    type: str  # one of QA_TYPES, or "caption" (a request to describe the image)


@dataclass
class Scene:
    kind: str  # one of SCENE_KINDS
    objects: list[Obj]
    caption: str
    qa: list[QA]


def position_of(x: float, y: float) -> str | None:
    """The named region (left/right/top/bottom/centre) a normalised point lies in; None in a corner."""
    cell = (min(max(int(x * 3), 0), 2), min(max(int(y * 3), 0), 2))
    return _CELL_REGION.get(cell)


# --------------------------------------------------------------------------- config


def _parse_composition(item: Any) -> Composition:
    """'red circle' or ('red', 'circle') -> ('red', 'circle'), naming any unknown word."""
    if isinstance(item, str):
        parts = item.split()
    elif isinstance(item, (tuple, list)):
        parts = list(item)
    else:
        raise ConfigError(f"holdout entries must be 'colour shape' strings or (colour, shape) pairs, got {item!r}")
    if len(parts) != 2:
        raise ConfigError(f"holdout entry {item!r} is not a 'colour shape' pair")
    colour, shape = parts
    if colour not in COLOURS:
        raise ConfigError(f"holdout entry {item!r}: unknown colour {colour!r}; colours are {', '.join(COLOURS)}")
    if shape not in SHAPES:
        raise ConfigError(f"holdout entry {item!r}: unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")
    return (colour, shape)


def _check_words(given: Sequence[str], vocab: Sequence[str], what: str) -> tuple[str, ...]:
    given = (given,) if isinstance(given, str) else tuple(given)
    unknown = [w for w in given if w not in vocab]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, unknown))}; {what} are {', '.join(vocab)}")
    if not given:
        raise ConfigError(f"{what} must not be empty")
    if len(set(given)) != len(given):
        raise ConfigError(f"{what} has duplicates: {given}")
    return given


def _pairable(compositions: Sequence[Composition]) -> list[Composition]:
    """Compositions that have a partner differing in both colour and shape."""
    return [a for a in compositions if any(a[0] != b[0] and a[1] != b[1] for b in compositions)]


@dataclass
class ShapesWorldConfig:
    image_size: int = 64  # default side in pixels; any scene also renders at other sizes
    seed: int = 0
    num_samples: int = 10_000  # len(world)
    # Relative weights of the scene kinds; a kind with weight 0 is never drawn.
    mix: dict[str, float] = field(default_factory=lambda: {"single": 0.4, "counting": 0.3, "pair": 0.3})
    # Bounds on objects per scene: single scenes have 1, pair scenes 2, counting scenes
    # draw their count from [min_objects, max_objects] (at most 3, the largest of COUNTS).
    min_objects: int = 1
    max_objects: int = 3
    colours: tuple[str, ...] = COLOURS
    shapes: tuple[str, ...] = SHAPES
    # Compositions ("red circle" or ("red", "circle")) never generated, for
    # compositional-generalisation tests; only_holdout=True generates only them.
    holdout: tuple[Composition, ...] = ()
    only_holdout: bool = False
    antialias: bool = True
    # The order a pair caption without places ("a red circle and a blue star") names its objects
    # in: "any" (the scene's own, random, order) or "raster" (reading order, `reading_order`: the
    # object whose drawn top edge comes in an earlier row, else the one further left, is named
    # first). An autoregressive generator draws in raster order; with "raster" the first object it
    # draws is always the first one named, so which words go with which object is fixed by order
    # rather than left to it.
    # Captions that state places keep the scene's order either way (the places bind them).
    mention_order: str = "any"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ConfigError(f"image_size must be an int >= 16 (smaller objects vanish), got {self.image_size!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ConfigError(f"num_samples must be a positive int, got {self.num_samples!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an int, got {self.seed!r}")
        if not 1 <= self.min_objects <= self.max_objects <= len(COUNTS):
            raise ConfigError(
                f"need 1 <= min_objects <= max_objects <= {len(COUNTS)}, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        # Lists (e.g. from JSON/YAML) become tuples so configs compare and hash by value.
        self.colours = _check_words(self.colours, COLOURS, "colours")
        self.shapes = _check_words(self.shapes, SHAPES, "shapes")
        self.holdout = tuple(dict.fromkeys(_parse_composition(h) for h in self.holdout))
        if self.only_holdout and not self.holdout:
            raise ConfigError("only_holdout=True needs a non-empty holdout list")
        if not self.compositions():
            raise ConfigError(
                f"no (colour, shape) composition is left to generate: colours={self.colours}, "
                f"shapes={self.shapes}, holdout={self.holdout}, only_holdout={self.only_holdout}"
            )
        if self.mention_order not in MENTION_ORDERS:
            raise ConfigError(f"mention_order must be one of {', '.join(MENTION_ORDERS)}, got {self.mention_order!r}")
        self._check_mix()

    def compositions(self) -> list[Composition]:
        """The (colour, shape) pairs this config may generate, in a fixed order."""
        held = set(self.holdout)
        return [
            (c, s) for c in self.colours for s in self.shapes
            if ((c, s) in held) == self.only_holdout
        ]

    def _check_mix(self) -> None:
        unknown = sorted(set(self.mix) - set(SCENE_KINDS))
        if unknown:
            raise ConfigError(f"unknown scene kind(s) in mix: {unknown}; kinds are {', '.join(SCENE_KINDS)}")
        for kind, w in self.mix.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"mix[{kind!r}] must be a finite number >= 0, got {w!r}")
        if sum(self.mix.values()) <= 0:
            raise ConfigError(f"mix gives no scene kind a positive weight: {self.mix}")
        active = {k for k, w in self.mix.items() if w > 0}
        # Every kind that can be drawn must be generable: fail now, not at sample 7123.
        if "single" in active and self.min_objects > 1:
            raise ConfigError(f"mix has 'single' scenes but min_objects={self.min_objects}; set mix['single']=0")
        if "pair" in active:
            if not self.min_objects <= 2 <= self.max_objects:
                raise ConfigError(
                    f"mix has 'pair' scenes (2 objects) but objects are limited to "
                    f"[{self.min_objects}, {self.max_objects}]; set mix['pair']=0"
                )
            if not _pairable(self.compositions()):
                raise ConfigError(
                    "mix has 'pair' scenes, which need two compositions differing in both colour and "
                    f"shape, but only {self.compositions()} can be generated; set mix['pair']=0"
                )


# --------------------------------------------------------------------------- scene generation


def _index_rng(seed: int, index: int) -> random.Random:
    """A per-index RNG from a stable hash: the same in every process (unlike salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8, person=b"unimm-shapes").digest()
    return random.Random(int.from_bytes(digest, "big"))


def _centroid_box(position: str, r: float) -> tuple[float, float, float, float]:
    """Where a centroid may go: inside its cell by CLEARANCE, and BORDER + r from the image edge."""
    col, row = _REGION_CELL[position]
    lo, hi = r + BORDER, 1 - r - BORDER
    return (
        max(col / 3 + CLEARANCE, lo), min((col + 1) / 3 - CLEARANCE, hi),
        max(row / 3 + CLEARANCE, lo), min((row + 1) / 3 - CLEARANCE, hi),
    )


def _apart(a: Obj, b: Obj) -> bool:
    return math.hypot(a.cx - b.cx, a.cy - b.cy) >= a.r + b.r + GAP


def _place(rng: random.Random, specs: Sequence[tuple[str, str, str]]) -> list[Obj]:
    """Lay out (colour, shape, size) specs in distinct regions, without overlap (rejection sampling)."""
    # Each object gets its own region: positions in captions/QA are then unique,
    # and objects start a grid cell apart, so few draws are rejected.
    for _ in range(_MAX_LAYOUT_TRIES):
        regions = rng.sample(POSITIONS, len(specs))
        placed: list[Obj] = []
        for (colour, shape, size), position in zip(specs, regions):
            r = RADIUS[size]
            x0, x1, y0, y1 = _centroid_box(position, r)
            # Rounded so scenes serialise compactly; all margins are far above 1e-4.
            obj = Obj(shape, colour, size, position, round(rng.uniform(x0, x1), 4), round(rng.uniform(y0, y1), 4), r)
            if not all(_apart(obj, other) for other in placed):
                break
            placed.append(obj)
        else:
            return placed
    raise RuntimeError(f"could not lay out {specs} without overlap in {_MAX_LAYOUT_TRIES} tries")


def _object_specs(rng: random.Random, kind: str, cfg: ShapesWorldConfig,
                  comps: list[Composition], pairable: list[Composition]) -> list[tuple[str, str, str]]:
    if kind == "single":
        colour, shape = rng.choice(comps)
        return [(colour, shape, rng.choice(SIZES))]
    if kind == "counting":
        # Copies share colour, shape and size, so "two small red circles" describes all of them.
        colour, shape = rng.choice(comps)
        return [(colour, shape, rng.choice(SIZES))] * rng.randint(cfg.min_objects, cfg.max_objects)
    a = rng.choice(pairable)
    b = rng.choice([c for c in comps if c[0] != a[0] and c[1] != a[1]])
    return [(a[0], a[1], rng.choice(SIZES)), (b[0], b[1], rng.choice(SIZES))]


# --------------------------------------------------------------------------- captions and questions

# Several phrasings per kind, picked by the per-index RNG: varied text, deterministic per (seed, index).
_SINGLE_CAPTIONS = (
    "a {size} {colour} {shape} {where}",
    "a {colour} {shape} {where}",
    "there is a {size} {colour} {shape} {where}",
    "a picture of a {size} {colour} {shape} {where}",
    "a {size} {colour} {shape}",
)
_COUNTING_CAPTIONS = (
    "{count} {size} {colour} {noun}",
    "{count} {colour} {noun}",
    "there {be} {count} {colour} {noun}",
    "a picture of {count} {size} {colour} {noun}",
)
_PAIR_CAPTIONS = (
    "a {colour} {shape} {where} and a {colour2} {shape2} {where2}",
    "a {size} {colour} {shape} {where} and a {size2} {colour2} {shape2} {where2}",
    "there is a {colour} {shape} {where} and a {colour2} {shape2} {where2}",
    "a {colour} {shape} and a {colour2} {shape2}",
)
_QUESTIONS = {
    "colour": ("What colour is the {shape}?", "Which colour is the {shape}?", "What is the colour of the {shape}?"),
    "colour_many": ("What colour are the {shape}s?", "Which colour are the {shape}s?"),
    "shape_at": ("What shape is {where}?", "Which shape is {where}?"),
    "shape_of": ("What shape is the {colour} object?", "Which shape is {colour}?"),
    "shape_many": ("What shape are the {colour} objects?", "Which shape do the {colour} objects have?"),
    "position": ("Where is the {colour} {shape}?", "In which part of the image is the {colour} {shape}?"),
    "count_shape": ("How many {shape}s are there?", "How many {colour} {shape}s are there?"),
    "count_all": ("How many objects are there?", "How many shapes are in the image?"),
    "size": ("Is the {colour} {shape} small or large?", "What size is the {colour} {shape}?"),
    "size_many": ("Are the {colour} {shape}s small or large?", "What size are the {colour} {shape}s?"),
}


# Requests for a description; the answer is the scene's caption (type "caption", not one of
# QA_TYPES: the VQA evaluator scores single-word answers).
_DESCRIBE = ("Describe the image.", "Describe the picture.", "What is in the image?", "What do you see?",
             "What does the picture show?")


def _a_an(text: str) -> str:
    """'a orange circle' -> 'an orange circle'."""
    return re.sub(r"\ba(?= [aeiou])", "an", text)


def _fields(obj: Obj, suffix: str = "") -> dict[str, str]:
    return {f"colour{suffix}": obj.colour, f"shape{suffix}": obj.shape,
            f"size{suffix}": obj.size, f"where{suffix}": _WHERE[obj.position]}


READING_ROWS = 16  # reading_order's rows: 1/16 of the side, the 64 px VQ's 4-pixel token rows


def reading_order(objects: Sequence[Obj]) -> list[Obj]:
    """Objects in the order a raster scan over rows of 1/READING_ROWS of the image meets them: by
    the row of their drawn top edge, then by their drawn left edge."""
    def key(o: Obj) -> tuple[int, float]:
        outline = _outline(o.shape, o.r)
        top, left = o.cy + min(y for _, y in outline), o.cx + min(x for x, _ in outline)
        return math.floor(top * READING_ROWS), left

    return sorted(objects, key=key)


def _caption(rng: random.Random, kind: str, objects: list[Obj], mention_order: str = "any") -> str:
    first = objects[0]
    if kind == "single":
        text = rng.choice(_SINGLE_CAPTIONS).format(**_fields(first))
    elif kind == "counting":
        n = len(objects)
        text = rng.choice(_COUNTING_CAPTIONS).format(
            **_fields(first), count=COUNTS[n - 1], noun=first.shape + ("s" if n > 1 else ""),
            be="are" if n > 1 else "is",
        )
    else:
        template = rng.choice(_PAIR_CAPTIONS)
        if mention_order == "raster" and "{where}" not in template:
            first, second = reading_order(objects)
        else:
            second = objects[1]
        text = template.format(**_fields(first), **_fields(second, "2"))
    return _a_an(text)


def swapped_caption(scene: Scene) -> str | None:
    """A two-object scene's caption with the objects' shape words exchanged ("a red circle and a
    blue star" -> "a red star and a blue circle"): the same words bound to other objects, so it
    describes another scene; None for scenes with one kind of object (nothing to swap)."""
    shapes = {o.shape for o in scene.objects}
    if len(scene.objects) != 2 or len(shapes) != 2:
        return None
    a, b = scene.objects[0].shape, scene.objects[1].shape
    return re.sub(rf"\b({a}|{b})\b", lambda m: b if m.group(1) == a else a, scene.caption)


def swapped_question(scene: Scene, qa: QA) -> str | None:
    """A two-object scene's question with the objects' colour and shape words exchanged ("What
    colour is the circle?" -> "What colour is the star?"), when the question names one of them
    and its answer differs for the other ("red", where the star is blue); else None. The question
    reads the same words either way, so only the object it is bound to tells the answers apart."""
    if len(scene.objects) != 2:
        return None
    a, b = scene.objects
    if a.colour == b.colour or a.shape == b.shape:
        return None
    own = named_object(scene, qa)
    if own is None:
        return None
    pairs = {a.colour: b.colour, b.colour: a.colour, a.shape: b.shape, b.shape: a.shape}
    swapped = re.sub(rf"\b({'|'.join(pairs)})\b", lambda m: pairs[m.group(1)], qa.question)
    return swapped if swapped != qa.question else None


def named_object(scene: Scene, qa: QA) -> Obj | None:
    """The one object a colour, shape, position or size question is about: the only object in
    the scene whose attribute is the answer; None when no single object is (copies in a counting
    scene, two objects alike in that attribute) or for other questions."""
    if qa.type not in ("colour", "shape", "position", "size"):
        return None
    own = [o for o in scene.objects if getattr(o, qa.type) == qa.answer]
    return own[0] if len(own) == 1 else None


def naming_word(scene: Scene, qa: QA) -> str | None:
    """The last word of the question that names `named_object` (its shape or its colour word:
    "diamond" in "What colour is the diamond?", "orange" in "What shape is the orange object?"),
    when that word names no other object of the scene; else None."""
    own = named_object(scene, qa)
    if own is None:
        return None
    words = re.findall(r"[a-z]+", qa.question.lower())
    for word in reversed(words):
        if word in (own.shape, own.colour) and not any(word in (o.shape, o.colour) for o in scene.objects
                                                       if o is not own):
            return word
    return None


def _ask(rng: random.Random, key: str, answer: str, qa_type: str, **fields: str) -> QA:
    return QA(rng.choice(_QUESTIONS[key]).format(**fields), answer, qa_type)


def _about(rng: random.Random, obj: Obj) -> list[QA]:
    """Questions about one object that is unique in its scene (single and pair scenes)."""
    f = _fields(obj)
    return [
        _ask(rng, "colour", obj.colour, "colour", **f),
        _ask(rng, rng.choice(("shape_at", "shape_of")), obj.shape, "shape", **f),
        _ask(rng, "position", obj.position, "position", **f),
        _ask(rng, "size", obj.size, "size", **f),
    ]


def _questions(rng: random.Random, kind: str, objects: list[Obj]) -> list[QA]:
    n, first = len(objects), objects[0]
    f = _fields(first)
    if kind == "counting" and n > 1:
        # Identical copies: colour, shape, size and count are well defined; "where" is not.
        qa = [
            _ask(rng, "colour_many", first.colour, "colour", **f),
            _ask(rng, "shape_many", first.shape, "shape", **f),
            _ask(rng, "size_many", first.size, "size", **f),
        ]
    else:
        qa = [q for obj in objects for q in _about(rng, obj)]
    same_shape = sum(o.shape == first.shape for o in objects)
    qa.append(_ask(rng, "count_shape", COUNTS[same_shape - 1], "count", **f))
    qa.append(_ask(rng, "count_all", COUNTS[n - 1], "count"))
    # Shuffled so a model cannot learn answers from the turn order.
    rng.shuffle(qa)
    return [q._replace(question=_a_an(q.question)) for q in qa]


def make_scene(cfg: ShapesWorldConfig, index: int) -> Scene:
    """Scene `index` of the world `cfg`: a pure function of (cfg, index)."""
    rng = _index_rng(cfg.seed, index)
    kinds = [k for k in SCENE_KINDS if cfg.mix.get(k, 0) > 0]
    kind = rng.choices(kinds, weights=[cfg.mix[k] for k in kinds])[0]
    comps = cfg.compositions()
    objects = _place(rng, _object_specs(rng, kind, cfg, comps, _pairable(comps)))
    caption = _caption(rng, kind, objects, cfg.mention_order)
    qa = _questions(rng, kind, objects)
    # Drawn after the other questions, so adding it left every earlier question as it was.
    qa.insert(rng.randrange(len(qa) + 1), QA(rng.choice(_DESCRIBE), caption, "caption"))
    return Scene(kind, objects, caption, qa)


# --------------------------------------------------------------------------- rendering


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """Vertices around (0, 0), all within radius r, centroid at (0, 0), y downwards."""
    def ring(n: int, start_deg: float, radii: Sequence[float] = (1.0,)) -> list[tuple[float, float]]:
        return [
            (r * radii[k % len(radii)] * math.cos(math.radians(start_deg + 360 * k / n)),
             r * radii[k % len(radii)] * math.sin(math.radians(start_deg + 360 * k / n)))
            for k in range(n)
        ]

    if shape == "circle":
        return ring(72, 0)
    if shape == "square":
        return ring(4, 45)  # axis-aligned
    if shape == "triangle":
        return ring(3, -90)  # equilateral, pointing up: circumcentre = centroid
    if shape == "star":
        return ring(10, -90, (1.0, 0.45))  # five points; inner radius keeps the centre pixel filled
    if shape == "diamond":
        # A narrow rhombus, so it is not just the square turned by 45 degrees.
        return [(0, -r), (0.7 * r, 0), (0, r), (-0.7 * r, 0)]
    if shape == "hexagon":
        return ring(6, 0)
    raise ValueError(f"unknown shape {shape!r}; shapes are {', '.join(SHAPES)}")


def render(scene: Scene, size: int, antialias: bool = True) -> Image.Image:
    """Draw `scene` as a size x size RGB image; the same scene at any size.

    With anti-aliasing, objects are drawn at SUPERSAMPLE x and box-filtered down:
    interior pixels keep their exact palette colour, edge pixels blend with the
    background.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"render size must be an int >= 8, got {size!r}")
    scale = SUPERSAMPLE if antialias else 1
    side = size * scale
    image = Image.new("RGB", (side, side), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        # Normalised u in [0, 1] -> PIL coordinates, where pixel k's centre is at k.
        points = [((obj.cx + x) * side - 0.5, (obj.cy + y) * side - 0.5) for x, y in _outline(obj.shape, obj.r)]
        draw.polygon(points, fill=COLOUR_RGB[obj.colour])
    if scale > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return image


# --------------------------------------------------------------------------- the dataset


# Prompts of IP-Adapter pairs: the shape is left to the reference picture ("object").
_REFERENCE_PROMPTS = ("a {colour} object {where}", "a {size} {colour} object", "a {colour} object",
                      "a {size} {colour} object {where}")
REFERENCE_SIZE = 64  # references are drawn at least this large: the encoder reads them, not the generator


def reference_pair(cfg: ShapesWorldConfig, index: int) -> tuple[Scene, Scene]:
    """(target, reference) for IP-Adapter training and scoring: a pure function of (cfg, index).

    The reference holds one object; the target holds one object of the same shape,
    placed and sized afresh. Half the time it keeps the reference's colour, and then
    half of those have an empty prompt (draw the reference's object again); otherwise
    the prompt names the target's colour (maybe another than the reference's), and
    perhaps its size and place, calling it an "object": the shape must come from the
    reference. The target's caption is that prompt.
    """
    rng = random.Random(f"unimm-reference/{cfg.seed}/{index}")  # str seeds hash with SHA-512: stable
    comps = cfg.compositions()
    colour, shape = rng.choice(comps)
    ref_colour = colour if rng.random() < 0.5 else rng.choice([c for c, s in comps if s == shape])
    reference = _place(rng, [(ref_colour, shape, rng.choice(SIZES))])
    target = _place(rng, [(colour, shape, rng.choice(SIZES))])
    if ref_colour == colour and rng.random() < 0.5:
        prompt = ""
    else:
        prompt = _a_an(rng.choice(_REFERENCE_PROMPTS).format(**_fields(target[0]))).strip()
    return Scene("single", target, prompt, []), Scene("single", reference, "", [])


class ShapesWorld:
    """An indexable, deterministic shapes world: `world[i]` is a Scene, `world.sample(i)` adds the image.

    `ShapesWorld(config)` or `ShapesWorld(seed=3, holdout=["red circle"])`.
    """

    def __init__(self, config: ShapesWorldConfig | None = None, **overrides: Any) -> None:
        if config is not None and overrides:
            raise TypeError("pass either a ShapesWorldConfig or keyword overrides, not both")
        self.config = config if config is not None else ShapesWorldConfig(**overrides)

    def __len__(self) -> int:
        return self.config.num_samples

    def _check_index(self, index: int) -> int:
        if not isinstance(index, int):
            raise TypeError(f"shapes world indices are ints, got {type(index).__name__}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a shapes world of {n} samples")
        return index % n

    def __getitem__(self, index: int) -> Scene:
        return make_scene(self.config, self._check_index(index))

    def sample(self, index: int, size: int | None = None) -> dict[str, Any]:
        """{"index", "image" (PIL RGB), "caption", "qa" (list of QA), "scene"} for sample `index`."""
        scene = self[index]
        image = render(scene, self.config.image_size if size is None else size, self.config.antialias)
        return {"index": self._check_index(index), "image": image, "caption": scene.caption,
                "qa": scene.qa, "scene": scene}


# --------------------------------------------------------------------------- writers


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then os.replace: readers never see half a file."""
    from ..folders import write_beside

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_beside(path, lambda f: f.write(data), mode=0o644)  # datasets are meant to be shared
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_image(image: Image.Image, out_dir: Path, index: int) -> str:
    """Save as out_dir/images/NNNNNN.png; return the path relative to out_dir (forward slashes)."""
    rel = f"images/{index:06d}.png"
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _atomic_write(out_dir / rel, buf.getvalue())
    return rel


def _count(world: ShapesWorld, n: int | None) -> int:
    n = len(world) if n is None else n
    if not 0 <= n <= len(world):
        raise ValueError(f"n must be in [0, {len(world)}] (the world's num_samples), got {n}")
    return n


def write_caption_jsonl(world: ShapesWorld, out_dir: str | os.PathLike, n: int | None = None,
                        size: int | None = None) -> Path:
    """Samples 0..n-1 as out_dir/images/*.png and out_dir/captions.jsonl ({"image", "caption"} lines)."""
    out_dir = Path(out_dir)
    lines = []
    for i in range(_count(world, n)):
        s = world.sample(i, size)
        lines.append(json.dumps({"image": _write_image(s["image"], out_dir, i), "caption": s["caption"]}))
    path = out_dir / "captions.jsonl"
    _atomic_write(path, "".join(line + "\n" for line in lines).encode())
    return path


def write_llava_json(world: ShapesWorld, out_dir: str | os.PathLike, n: int | None = None,
                     size: int | None = None, max_turns: int | None = None) -> Path:
    """Samples 0..n-1 as out_dir/images/*.png and a LLaVA-style out_dir/llava.json.

    Each record has one human/gpt turn per QA pair (up to `max_turns`); only the
    first human turn carries the "<image>" placeholder, as in LLaVA.
    """
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"max_turns must be >= 1 or None, got {max_turns}")
    out_dir = Path(out_dir)
    records = []
    for i in range(_count(world, n)):
        s = world.sample(i, size)
        conversations = []
        for t, qa in enumerate(s["qa"][:max_turns]):
            prompt = f"<image>\n{qa.question}" if t == 0 else qa.question
            conversations += [{"from": "human", "value": prompt}, {"from": "gpt", "value": qa.answer}]
        image = _write_image(s["image"], out_dir, i)
        records.append({"id": f"{i:06d}", "image": image, "conversations": conversations})
    path = out_dir / "llava.json"
    _atomic_write(path, json.dumps(records, indent=1).encode())
    return path


def caption_vocabulary() -> tuple[str, ...]:
    """Every word the shapes world's captions can use (lower case, sorted): what a model
    trained on them has seen in a generation prompt. Read off the caption templates and
    the values they are filled with, so it cannot drift from the captions."""
    fillers = [*COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *SIZES, *COUNTS, *_WHERE.values(), "is", "are",
               "an"]  # "an" from the article fix before vowels
    text = " ".join([*_SINGLE_CAPTIONS, *_COUNTING_CAPTIONS, *_PAIR_CAPTIONS, *fillers])
    return _words(text)


def reference_vocabulary() -> tuple[str, ...]:
    """The words of IP-Adapter training prompts that captions lack ("object"): known to a model
    whose prompt comes with a reference picture."""
    return tuple(sorted(set(_words(" ".join(_REFERENCE_PROMPTS))) - set(caption_vocabulary())))


def _words(text: str) -> tuple[str, ...]:
    """The sorted distinct lower-case words of `text`, its {placeholders} left out."""
    return tuple(sorted(set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text).lower()))))

"""Text corpus for training small tokenizers: the words of the shapes world.

Sentences are drawn from the same vocabulary the shapes-world data uses
(captions, questions and answers), plus general chat scaffolding, so a small
byte-level BPE learns whole-word merges for everything it will see while
still encoding any other text byte by byte.
"""
from __future__ import annotations

import random

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
POSITIONS = ("left", "right", "top", "bottom", "centre")
SIZES = ("small", "large")
COUNTS = ("one", "two", "three")

_TEMPLATES = (
    "a {size} {colour} {shape} on the {pos}",
    "a {colour} {shape} in the {pos}",
    "{count} {colour} {shape}s",
    "a {colour} {shape} and a {colour2} {shape2}",
    "What colour is the {shape}? {colour}",
    "What shape is on the {pos}? a {shape}",
    "How many {shape}s are there? {count}",
    "Where is the {colour} {shape}? on the {pos}",
    "Is there a {colour} {shape} in the image? yes",
    "Describe the image. There is a {size} {colour} {shape} on the {pos} of the picture.",
    "User: {question}\nAssistant: {answer}",
)
_QUESTIONS = ("What is in the image?", "Describe the picture.", "What do you see?", "Which colour?")


def corpus_lines(name_or_path: str) -> list[str]:
    """A text tokenizer's training corpus: "shapes" (this world's sentences) or a text file's lines."""
    if name_or_path == "shapes":
        return shapes_corpus()
    from ..tokenizers.text import read_corpus

    return read_corpus(name_or_path)


def shapes_corpus(num_sentences: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(num_sentences):
        t = rng.choice(_TEMPLATES)
        out.append(
            t.format(
                size=rng.choice(SIZES), colour=rng.choice(COLOURS), colour2=rng.choice(COLOURS),
                shape=rng.choice(SHAPES), shape2=rng.choice(SHAPES), pos=rng.choice(POSITIONS),
                count=rng.choice(COUNTS), question=rng.choice(_QUESTIONS),
                answer=f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)}",
            )
        )
    return out

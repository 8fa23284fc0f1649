"""Any-resolution input by tiling (LLaVA-NeXT's AnyRes).

A picture is read as several *views*, each at the encoder's own size S: a global
thumbnail (the whole picture, fitted as any image is), then the tiles of a grid
of `rows x cols` cells. The grid is the candidate that keeps most of the
picture's pixels at the least padding for its aspect ratio; the picture is
resized into the grid's canvas (cols*S x rows*S) keeping its aspect ratio,
padded with the mean colour, and cut into S x S tiles.

In the sequence an image is one block of placeholders: the thumbnail's m
tokens, then the tiles' tokens laid out as the picture is, row by row of the
whole canvas (tokens of side-by-side tiles interleaved as their pixels are),
each row ended by a newline. The newlines are ordinary text tokens whose
embedding the model learns (LLaVA-NeXT's learned `image_newline` vector), and
they are how the model reads an image's grid back from its ids: a block's runs
of placeholders are [m, cols*g, cols*g, ...] with rows*g rows of cols*g, where
g*g = m tokens make one view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..config import ConfigError


@dataclass
class TilingConfig:
    # Candidate grids as [rows, cols] of tiles (LLaVA-NeXT's grid pinpoints, in tiles of the
    # encoder's size): the default reads a wide, a tall or a large square picture at up to 4x
    # the encoder's pixels, plus the thumbnail.
    grids: list = field(default_factory=lambda: [[1, 2], [2, 1], [2, 2]])

    def __post_init__(self):
        ok = isinstance(self.grids, list) and self.grids and all(
            isinstance(g, (list, tuple)) and len(g) == 2 and all(isinstance(x, int) and x >= 1 for x in g)
            for g in self.grids)
        if not ok:
            raise ConfigError(f"encoder.tiling.grids must be a non-empty list of [rows, cols] (ints >= 1), "
                              f"got {self.grids!r}")
        self.grids = [list(g) for g in self.grids]


def choose_grid(width: int, height: int, grids: list, size: int) -> tuple[int, int]:
    """The (rows, cols) whose canvas keeps most of a width x height picture's pixels when the
    picture is fitted into it, and of those the one that pads least."""
    def score(grid):
        rows, cols = grid
        scale = min(cols * size / width, rows * size / height)
        kept = min(width * scale * height * scale, width * height)
        return kept, -(rows * cols * size * size - kept)

    rows, cols = max(grids, key=score)
    return rows, cols


def tiles(image: Image.Image, grid: tuple[int, int], size: int, fill: tuple[int, int, int]) -> list[Image.Image]:
    """The picture fitted into the grid's canvas (aspect kept, centred, padded with `fill`),
    cut into size x size tiles, row by row."""
    rows, cols = grid
    W, H = cols * size, rows * size
    scale = min(W / image.width, H / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = Image.new("RGB", (W, H), fill)
    canvas.paste(image.convert("RGB").resize((w, h), Image.BICUBIC), ((W - w) // 2, (H - h) // 2))
    return [canvas.crop((c * size, r * size, (c + 1) * size, (r + 1) * size)) for r in range(rows) for c in range(cols)]


def side(tokens_per_view: int) -> int:
    """g: the side of a view's square token grid (g * g = tokens_per_view)."""
    g = math.isqrt(tokens_per_view)
    if g * g != tokens_per_view:
        raise ConfigError(f"encoder.tiling needs a projector whose tokens form a square grid; one view gives "
                          f"{tokens_per_view} tokens (a perceiver or Q-Former's queries have no layout)")
    return g


def runs(grid: tuple[int, int], tokens_per_view: int) -> list[int]:
    """The placeholder runs of one tiled image's block: the thumbnail's, then one per token row."""
    rows, cols = grid
    g = side(tokens_per_view)
    return [tokens_per_view] + [cols * g] * (rows * g)


def grid_of(block: list[int], tokens_per_view: int) -> tuple[int, int]:
    """(rows, cols) from a block's placeholder runs (the inverse of `runs`); a lone run of m is an
    untiled image, (0, 0)."""
    if block == [tokens_per_view]:
        return 0, 0
    g = side(tokens_per_view)
    rows_g, row = len(block) - 1, block[1] if len(block) > 1 else 0
    if (block[0] != tokens_per_view or rows_g % g or row % g or row == 0
            or any(n != row for n in block[1:])):
        raise ValueError(f"an image's placeholders run {block}; a tiled image's are [{tokens_per_view}] and then "
                         f"rows of equal length, both multiples of {g} (build the ids with the model's processor)")
    return rows_g // g, row // g


def blocks(ids: list[int], image_token: int, end_token: int) -> list[list[int]]:
    """Each image's runs of placeholders in `ids`, in reading order; an image's block ends at
    `end_token` (end of image), so the ids may start inside an image's block."""
    out, current, run = [], [], 0
    for t in ids:
        if t == image_token:
            run += 1
            continue
        if run:
            current.append(run)
            run = 0
        if t == end_token and current:
            out.append(current)
            current = []
    if run:
        current.append(run)
    if current:
        out.append(current)
    return out


def arrange(views: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """One image's view features (1 + rows*cols, m, D), thumbnail first, tiles row by row ->
    its tokens in reading order (m + rows*cols*m, D): the thumbnail's, then the canvas's
    token rows, each across all the tiles side by side."""
    rows, cols = grid
    n, m, D = views.shape
    if rows == 0:
        return views.reshape(n * m, D)
    g = side(m)
    grid_tokens = views[1:].reshape(rows, cols, g, g, D).permute(0, 2, 1, 3, 4).reshape(rows * g * cols * g, D)
    return torch.cat([views[0], grid_tokens])

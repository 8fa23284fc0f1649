"""Image layouts: how a picture becomes views for the encoder and placeholders in the sequence.

A layout owns three things that must agree: the views the processor cuts a
picture into (each a tensor row of `pixel_values`), the runs of placeholders
the processor writes for it (a block from begin- to end-of-image; several
runs are each ended by a newline, an ordinary text token the model learns),
and how the model turns the views' features into the tokens for those
placeholders. The model reads each image's shape back from its runs, so ids
and views are all a batch carries. One config section picks the layout:

- "single" (default): one view at the encoder's size S, one run of m tokens.
- `encoder.tiling` (LLaVA-NeXT AnyRes): a global thumbnail plus a grid of
  `rows x cols` S x S tiles, the grid that keeps most of the picture's pixels
  at the least padding for its aspect ratio. The picture is resized into the
  grid's canvas keeping its aspect ratio and padded with the mean colour. Its
  block is the thumbnail's run of m, then the tiles' tokens row by row of the
  whole canvas (side-by-side tiles interleaved as their pixels are): runs
  [m, cols*g, ..., cols*g] with rows*g rows, where g*g = m.
- `encoder.native` (Qwen2-VL): the picture at (about) its own resolution and
  aspect ratio: resized so that its sides are multiples of a cell of
  merge x merge patches and it holds between min_tokens and max_tokens
  cells; the encoder reads the whole picture at once (its position embeddings
  interpolated to the picture's own patch grid: 2-D positions), and each
  cell's merge x merge patch features are concatenated into one token (the
  2x2 merge) before the projector. Its block is one run per row of cells.

With `cross_attention` in the model config the images are read beside the
sequence by gated cross-attention blocks (models/cross_attention.py):

- alone (Flamingo, NVLM-X): an image is one marker placeholder, which keeps
  its own embedding; the blocks read its projected tokens.
- with `encoder.tiling` (NVLM-H, the hybrid): the thumbnail's m tokens stand
  in the sequence, then one marker per tile, a row of tiles per line (runs
  [m, cols, ..., cols]); the blocks read the tiles' tokens, laid out as
  their pixels are.

`encoder.frame_tokens` (LLaVA-OneVision's per-frame budget, with the single
and tiled layouts): a video frame is one S x S view whose square token grid
is average-pooled to frame_tokens tokens, a single run of that length; the
model tells frames from images by the run's length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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


@dataclass
class NativeConfig:
    # The picture keeps its aspect ratio and about its resolution, within these many tokens
    # (cells of merge x merge patches); Qwen2-VL's min_pixels / max_pixels, counted in tokens.
    min_tokens: int = 4
    max_tokens: int = 64
    merge: int = 2  # merge x merge neighbouring patches become one token (Qwen2-VL's PatchMerger: 2)
    # 2-D rotary positions in the tower's self-attention (Qwen2-VL's vision RoPE): half of each
    # head's channels rotate by the patch's row, half by its column, so attention sees relative
    # 2-D offsets at any grid size; on top of SigLIP's own (interpolated) position embeddings.
    # Off by default: a pretrained tower was not trained with it.
    rope: bool = False
    rope_theta: float = 10000.0

    def __post_init__(self):
        if not isinstance(self.rope, bool):
            raise ConfigError(f"encoder.native.rope must be true or false, got {self.rope!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            raise ConfigError(f"encoder.native.rope_theta must be a number > 1, got {self.rope_theta!r}")
        for name in ("min_tokens", "max_tokens", "merge"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"encoder.native.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.min_tokens > self.max_tokens:
            raise ConfigError(f"encoder.native.min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")


def rope_2d(x: torch.Tensor, rows: int, cols: int, heads: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotate (B, rows*cols, heads*hd) query or key channels by each patch's 2-D position
    (patches row by row): in every head the first hd/2 channels turn with the row, the last
    hd/2 with the column (rotate-half pairs), so q_i . k_j depends on the offset i - j only."""
    B, N, D = x.shape
    hd = D // heads
    quarter = hd // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float32, device=x.device) / quarter)
    r = torch.arange(rows, device=x.device).repeat_interleave(cols).float()
    c = torch.arange(cols, device=x.device).repeat(rows).float()
    pairs = x.reshape(B, N, heads, 2, 2, quarter).float()  # (.., row/col half, rotate-half pair, freq)
    halves = []
    for half, pos in enumerate((r, c)):
        angle = pos[:, None] * freqs[None]  # (N, quarter)
        cos, sin = angle.cos()[:, None], angle.sin()[:, None]  # broadcast over heads
        a, b = pairs[:, :, :, half, 0], pairs[:, :, :, half, 1]
        halves.append(torch.stack([a * cos - b * sin, b * cos + a * sin], 3))
    out = torch.stack(halves, 3)
    return out.reshape(B, N, D).to(x.dtype)


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
    n, m, D = views.shape
    if grid[0] == 0:
        return views.reshape(n * m, D)
    return torch.cat([views[0], grid_tokens(views[1:], grid)])


def grid_tokens(tiles_feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The tiles' features (rows*cols, m, D), row by row -> the canvas's tokens in reading order
    (rows*g * cols*g, D): each token row runs across all the tiles side by side."""
    rows, cols = grid
    _, m, D = tiles_feats.shape
    g = side(m)
    return tiles_feats.reshape(rows, cols, g, g, D).permute(0, 2, 1, 3, 4).reshape(rows * g * cols * g, D)


def native_grid(width: int, height: int, cell: int, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """(rows, cols) of cells for a width x height picture: about its own size and aspect ratio,
    with min_tokens <= rows * cols <= max_tokens."""
    rows, cols = max(1, round(height / cell)), max(1, round(width / cell))
    if rows * cols > max_tokens:  # too many: shrink, keeping the aspect ratio
        scale = math.sqrt(max_tokens / (rows * cols))
        rows, cols = max(1, math.floor(rows * scale)), max(1, math.floor(cols * scale))
        while rows * cols > max_tokens:  # a side already at 1 cannot shrink with the other
            rows, cols = (rows - 1, cols) if rows >= cols else (rows, cols - 1)
    if rows * cols < min_tokens:
        scale = math.sqrt(min_tokens / (rows * cols))
        rows, cols = math.ceil(rows * scale), math.ceil(cols * scale)
    return rows, cols


def rows_of_images(images_per_row: list[int], tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Group each image's visual tokens (a list, in reading order, of (n_i, D); the counts may
    differ) by the row they belong to: (B, V, D) padded visual tokens and (B, V) True where
    real, V the most tokens any row has (at least 1)."""
    if sum(images_per_row) != len(tokens):
        raise ValueError(f"the input has {sum(images_per_row)} image markers but {len(tokens)} image(s) were encoded")
    D = tokens[0].shape[-1]
    per_row, k = [], 0
    for n in images_per_row:
        per_row.append(torch.cat(tokens[k:k + n]) if n else tokens[0].new_zeros(0, D))
        k += n
    V = max([1, *(t.shape[0] for t in per_row)])
    visual = tokens[0].new_zeros(len(per_row), V, D)
    mask = torch.zeros(len(per_row), V, dtype=torch.bool, device=tokens[0].device)
    for b, t in enumerate(per_row):
        visual[b, :t.shape[0]] = t
        mask[b, :t.shape[0]] = True
    return visual, mask


def pool_tokens(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """A view's square grid of tokens (m, D) average-pooled to n tokens (a square number), row by row."""
    g, s = side(tokens.shape[0]), math.isqrt(n)
    grid = tokens.T.reshape(1, -1, g, g)
    return F.adaptive_avg_pool2d(grid.float(), s).to(tokens.dtype).reshape(-1, s * s).T


class SingleLayout:
    """One view at the encoder's size, one run of m placeholders (a video frame: one view, a
    run of frame_tokens, its tokens pooled)."""

    cross_attends = False  # whether cross-attention blocks read the images (at every decoding step)

    def __init__(self, config, image_size: int, frame_tokens: int | None = None):
        self.config, self.image_size, self.frame_tokens = config, image_size, frame_tokens

    def projector_width(self, encoder_width: int) -> int:
        return encoder_width

    def tokens_per_view(self, encoder, projector) -> int:
        return projector.num_output_tokens(encoder.num_patches)

    def check(self, model) -> None:
        """Refuse a model whose other parts this layout cannot serve (at build time)."""
        n = self.frame_tokens
        if n is not None:
            m = model.num_understanding_tokens
            if math.isqrt(m) ** 2 != m:
                raise ConfigError(f"encoder.frame_tokens pools a view's square grid of tokens; this projector gives "
                                  f"{m} per view (use linear, mlp or pixel_shuffle)")
            if math.isqrt(n) ** 2 != n or n >= m:
                raise ConfigError(f"encoder.frame_tokens must be a square number below an image's {m} tokens, got {n}")

    def views(self, image: Image.Image, fit, fill, m: int, frame: bool = False) -> tuple[list[Image.Image], list[int]]:
        """(the picture's views, its runs of placeholders); `fit` makes the usual S x S view; a
        video frame (`frame`) gets the frame budget where the model has one."""
        return [fit(image)], [self.frame_tokens if frame and self.frame_tokens else m]

    def num_views(self, runs: list[int], m: int) -> int:
        return 1

    def features(self, model, input_ids: torch.Tensor, views: torch.Tensor) -> torch.Tensor | None:
        """The tokens for every image placeholder of `input_ids`, in reading order (n_slots, D);
        None where the placeholders keep their own embedding (markers)."""
        if self.frame_tokens is not None:
            found, _ = self._blocks(model, input_ids, views)
            feats = model.encode_images(views)
            return torch.cat([self._pooled(feats[k], block) for k, block in enumerate(found)])
        feats = model.encode_images(views)  # (I, M, D)
        n_slots = int((input_ids == model.token_ids.image).sum())
        if n_slots != feats.shape[0] * feats.shape[1]:
            raise ValueError(f"the input has {n_slots} image placeholders but {feats.shape[0]} image(s) x "
                             f"{feats.shape[1]} tokens were encoded")
        return feats.reshape(-1, feats.shape[-1])

    def _pooled(self, tokens: torch.Tensor, block: list[int]) -> torch.Tensor:
        """One view's tokens (m, D) for a single-run block: as they are for an image's run of m, pooled
        for a frame's run of frame_tokens."""
        if block == [tokens.shape[0]]:
            return tokens
        if block == [self.frame_tokens]:
            return pool_tokens(tokens, self.frame_tokens)
        raise ValueError(f"an image's placeholders run {block}; this model reads runs of {tokens.shape[0]} (an "
                         f"image) or {self.frame_tokens} (a video frame) (build the ids with the model's processor)")

    def visual(self, model, input_ids: torch.Tensor, views: torch.Tensor):
        """What cross-attention blocks read: ((B, V, D) each row's visual tokens, (B, V) True where
        real), or None when the images are all in the sequence."""
        return None

    def _blocks(self, model, input_ids: torch.Tensor, views: torch.Tensor) -> tuple[list[list[int]], list[int]]:
        """(each image's runs in reading order, how many images each row holds), checked against
        the number of views given."""
        tok, m = model.token_ids, model.num_understanding_tokens
        per_row = [blocks(row, tok.image, tok.eoi) for row in input_ids.tolist()]
        found = [b for row in per_row for b in row]
        needed = sum(self.num_views(b, m) for b in found)
        if needed != views.shape[0]:
            raise ValueError(f"the input's image placeholders take {needed} views but {views.shape[0]} were given")
        return found, [len(row) for row in per_row]


class CrossLayout(SingleLayout):
    """Cross-attention fusion: one marker per image in the sequence (it keeps its own
    embedding); the blocks read the image's projected tokens (models/cross_attention.py)."""

    cross_attends = True

    def tokens_per_view(self, encoder, projector):
        return 1

    def features(self, model, input_ids, views):
        n_slots = int((input_ids == model.token_ids.image).sum())
        if n_slots != views.shape[0]:
            raise ValueError(f"the input has {n_slots} image markers but {views.shape[0]} image(s) were given")
        return None

    def visual(self, model, input_ids, views):
        per_row = (input_ids == model.token_ids.image).sum(1).tolist()
        return rows_of_images(per_row, list(model.encode_images(views)))


class TiledLayout(SingleLayout):
    """AnyRes: a thumbnail plus the grid of tiles that fits the picture (module docstring)."""

    def check(self, model) -> None:
        side(model.num_understanding_tokens)  # the tiles' tokens must form a square grid

    def views(self, image, fit, fill, m, frame=False):
        if frame and self.frame_tokens:  # a video frame: one pooled view, no tiles (LLaVA-OneVision)
            return [fit(image)], [self.frame_tokens]
        grid = choose_grid(image.width, image.height, self.config.grids, self.image_size)
        return [fit(image), *tiles(image, grid, self.image_size, fill)], runs(grid, m)

    def num_views(self, runs, m):
        if self.frame_tokens is not None and runs == [self.frame_tokens]:
            return 1
        rows, cols = grid_of(runs, m)
        return 1 + rows * cols

    def features(self, model, input_ids, views):
        found, _ = self._blocks(model, input_ids, views)
        feats = model.encode_images(views)  # (V, m, D)
        out, used = [], 0
        for block in found:
            n = self.num_views(block, feats.shape[1])
            if len(block) == 1:  # an untiled image, or a video frame
                out.append(self._pooled(feats[used], block))
            else:
                out.append(arrange(feats[used:used + n], grid_of(block, feats.shape[1])))
            used += n
        return torch.cat(out) if out else feats.new_zeros(0, feats.shape[-1])


class HybridLayout(TiledLayout):
    """NVLM-H: the thumbnail's m tokens in the sequence, then one marker per tile (a row of tiles
    per line: runs [m, cols, ..., cols]); the cross-attention blocks read the tiles' tokens,
    laid out as their pixels are, so the sequence stays short at any resolution."""

    cross_attends = True

    def views(self, image, fit, fill, m, frame=False):
        grid = choose_grid(image.width, image.height, self.config.grids, self.image_size)
        return [fit(image), *tiles(image, grid, self.image_size, fill)], [m] + [grid[1]] * grid[0]

    @staticmethod
    def grid(block: list[int], m: int) -> tuple[int, int]:
        if block == [m]:
            return 0, 0
        if block[0] != m or len(block) < 2 or any(n != block[1] for n in block[1:]):
            raise ValueError(f"an image's placeholders run {block}; a hybrid image's are [{m}] (the thumbnail) "
                             "and then rows of equally many tile markers (build the ids with the model's processor)")
        return len(block) - 1, block[1]

    def num_views(self, runs, m):
        rows, cols = self.grid(runs, m)
        return 1 + rows * cols

    def _thumbnails_first(self, found: list[list[int]], m: int) -> tuple[list[int], list[int]]:
        """Indices of the views that are thumbnails, and of those that are tiles."""
        thumbs, tile_views, used = [], [], 0
        for block in found:
            n = self.num_views(block, m)
            thumbs.append(used)
            tile_views += range(used + 1, used + n)
            used += n
        return thumbs, tile_views

    def features(self, model, input_ids, views):
        found, _ = self._blocks(model, input_ids, views)
        m = model.num_understanding_tokens
        thumbs, _ = self._thumbnails_first(found, m)
        feats = model.encode_images(views[thumbs])  # (I, m, D)
        marker = model.backbone.embed(input_ids.new_full((1,), model.token_ids.image))[0].to(feats.dtype)
        out = [torch.cat([feats[k], marker.expand(sum(block[1:]), -1)]) for k, block in enumerate(found)]
        return torch.cat(out) if out else feats.new_zeros(0, feats.shape[-1])

    def visual(self, model, input_ids, views):
        found, per_row = self._blocks(model, input_ids, views)
        m = model.num_understanding_tokens
        _, tile_views = self._thumbnails_first(found, m)
        feats = model.encode_images(views[tile_views]) if tile_views else None  # (T, m, D)
        tokens, used = [], 0
        for block in found:
            rows, cols = self.grid(block, m)
            if rows == 0:  # no tiles: the blocks have nothing to read for this image
                tokens.append(views.new_zeros(0, model.backbone.hidden_size))
                continue
            tokens.append(grid_tokens(feats[used:used + rows * cols], (rows, cols)))
            used += rows * cols
        return rows_of_images(per_row, tokens)


class NativeLayout(SingleLayout):
    """Qwen2-VL-style native resolution (module docstring)."""

    def __init__(self, config: NativeConfig, image_size: int, patch_size: int):
        super().__init__(config, image_size)
        self.merge = config.merge
        self.cell = patch_size * config.merge  # pixels per token side

    def projector_width(self, encoder_width):
        return encoder_width * self.merge ** 2  # a token: merge x merge patch features side by side

    def tokens_per_view(self, encoder, projector):
        return (self.image_size // self.cell) ** 2  # a picture at the encoder's size (for untiled ids)

    def check(self, model) -> None:
        enc = model.config.encoder
        if enc.tower != "siglip" or enc.also:
            raise ConfigError("encoder.native reads a picture through one vision tower (no 'also', no 'patches')")
        kind = model.config.projector["type"]
        if kind not in ("linear", "mlp"):
            raise ConfigError(f"encoder.native gives each picture its own number of tokens; the {kind} projector "
                              "expects a fixed count: use a linear or mlp projector")
        if self.image_size % self.cell:
            raise ConfigError(f"encoder image_size {self.image_size} is not a multiple of the {self.cell}-pixel cell "
                              "(patch_size x native.merge)")

    def views(self, image, fit, fill, m, frame=False):
        c = self.config
        rows, cols = native_grid(image.width, image.height, self.cell, c.min_tokens, c.max_tokens)
        picture = image.convert("RGB").resize((cols * self.cell, rows * self.cell), Image.BICUBIC)
        cells = [picture.crop((x * self.cell, y * self.cell, (x + 1) * self.cell, (y + 1) * self.cell))
                 for y in range(rows) for x in range(cols)]
        return cells, [cols] * rows

    def num_views(self, runs, m):
        return len(runs) * runs[0]

    def features(self, model, input_ids, views):
        found, _ = self._blocks(model, input_ids, views)
        out, used, k, c = [], 0, self.merge, self.cell
        for block in found:
            rows, cols = len(block), block[0]
            if any(n != cols for n in block):
                raise ValueError(f"an image's placeholders run {block}; a native-resolution image's rows are "
                                 "equally long (build the ids with the model's processor)")
            cells = views[used:used + rows * cols]
            used += rows * cols
            picture = cells.reshape(rows, cols, 3, c, c).permute(2, 0, 3, 1, 4).reshape(1, 3, rows * c, cols * c)
            feats = model.encoder.tower_features(picture)  # (1, rows*k * cols*k, D), row-major patches
            D = feats.shape[-1]
            merged = feats.reshape(rows, k, cols, k, D).permute(0, 2, 1, 3, 4).reshape(1, rows * cols, k * k * D)
            out.append(model.projector(merged)[0])
        if not out:
            return views.new_zeros(0, model.backbone.hidden_size)
        return torch.cat(out)


def build_layout(encoder_config, cross_attention, image_size: int, patch_size: int) -> SingleLayout:
    """The layout a model config asks for: at most one of encoder.tiling and encoder.native,
    with or without cross-attention fusion (tiling with it is NVLM-H's hybrid)."""
    tiling, native = encoder_config.tiling, encoder_config.native
    if tiling is not None and native is not None:
        raise ConfigError("encoder.tiling and encoder.native are two ways to read a picture's resolution: set one")
    frames = encoder_config.frame_tokens
    if frames is not None and (native is not None or cross_attention is not None):
        raise ConfigError("encoder.frame_tokens pools a frame's tokens in the sequence; it works with the single "
                          "and tiled layouts, not with encoder.native or cross_attention")
    if native is not None and cross_attention is not None:
        raise ConfigError("encoder.native lays its tokens out in the sequence; cross-attention fusion reads "
                          "images beside it (drop one of them, or use encoder.tiling for the hybrid)")
    if tiling is not None:
        return TiledLayout(tiling, image_size, frames) if cross_attention is None else HybridLayout(tiling, image_size)
    if native is not None:
        return NativeLayout(native, image_size, patch_size)
    return SingleLayout(None, image_size, frames) if cross_attention is None else CrossLayout(None, image_size)

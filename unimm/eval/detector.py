"""A model-free object detector for shapes-world images.

`detect(image)` finds every object in a shapes-world picture and names it in
the world's own vocabulary (colour, shape, size, position), so generated
images can be scored without a learned model (GenEval-style).

Method
------
1. Pixel colours. Every pixel is compared with the eight palette colours and
   the background. A pixel within CORE_DISTANCE (RGB) of a palette colour is a
   *core* pixel of that colour; anti-aliased edge pixels (blends with the
   background) and noise are further away and are not core. CORE_DISTANCE is
   0.4x the smallest gap between palette colours, so the nearest colour is
   unambiguous.
2. Objects. Core pixels are grouped into 8-connected components per colour
   (breadth-first search). Each component then grows by up to HALO_STEPS
   pixels into its anti-aliased rim: a neighbouring pixel joins when it is a
   blend of the background and the component's colour (its distance from the
   background-colour segment is < HALO_RESIDUAL). A joined pixel's *coverage*
   is its position on that segment (0 = background, 1 = pure colour). Coverage
   makes area and centroid sub-pixel accurate, which is what lets small shapes
   be told apart at low resolution. Objects whose coverage sums to less than
   MIN_AREA (a fraction of the image, ~40% of the smallest shape the world
   draws) are noise and are dropped.
3. Shape, by fitted templates (analysis by synthesis). For each of the six
   shapes, a template is drawn (supersampled, as `render` draws) with the
   observed area and centroid (moment matching, which also cancels the
   rasteriser's bias), and compared with the observed coverage map (L1
   difference / area). The two best candidates are then fitted exactly by a
   pattern search over (radius, cx, cy); the best fit wins. At 32 px a small
   circle and a small hexagon (6 px across) differ by ~0.1 of their area, no
   more than the moment-matching residual, so this last fit is what separates
   them (without it 32 px scored 93%). A blob no shape fits within
   MAX_SHAPE_ERROR is reported with shape None (unrecognised). The scale is
   fitted per hypothesis, so the test does not depend on the object's size;
   shapes keep the world's fixed orientation.
4. Size and position. The fitted template's enclosing radius is compared with
   the geometric mean of the world's small and large radii; the centroid gives
   the region through `position_of` (None in an unnamed corner).

Resolution: on ground-truth renders the detector gets every object's colour,
shape, size and position and every scene's count right in 100% of 6,300
scenes at 32 px (300 each at 48, 64, 96 and 128 px: 100%), so MIN_RELIABLE_SIZE
is 32, the smallest evaluation size tried. Below that it degrades (24 px:
99.7%, a small hexagon read as a circle; 16 px: 97.7%, objects missed and
shapes confused) and is not validated. tests/test_eval.py holds the 99% bar.
Renders without anti-aliasing are not its target (92% at 32 px).
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..data.corpus import COLOURS, SHAPES
# _outline is the world's own shape geometry: templates drawn from it cannot drift from `render`.
from ..data.shapes import BACKGROUND_RGB, COLOUR_RGB, RADIUS, SUPERSAMPLE, _outline, position_of

__all__ = ["Detection", "MIN_RELIABLE_SIZE", "detect", "describe"]

MIN_RELIABLE_SIZE = 32  # smallest image side at which the >= 99% scene-accuracy bar was measured

_PALETTE = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)  # (K, 3)
_BACKGROUND = np.array(BACKGROUND_RGB, dtype=np.float32)
_MIN_GAP = min(
    float(np.linalg.norm(a - b))
    for a, b in itertools.combinations([*_PALETTE, _BACKGROUND], 2)
)
CORE_DISTANCE = 0.4 * _MIN_GAP  # ~45 RGB units: a core pixel is nearer one colour than any other by far
HALO_RESIDUAL = 40.0  # an edge pixel must lie this close to the background-colour blend segment
HALO_MIN_COVERAGE = 0.05  # fainter rim pixels are indistinguishable from background noise
HALO_STEPS = 3  # rim growth in pixels: covers thin star arms that have no core pixel at low resolution
# Smallest shape: a small star, area 1.32 r^2 with r = 0.09 -> ~1.07% of the image; keep 40% of that.
MIN_AREA = 0.0043
MAX_SHAPE_ERROR = 0.6  # template L1 / area; ground-truth renders fit within ~0.12 at 32 px, ~0.05 from 48 px
_FIT_STEPS = 3  # moment-matching iterations per template (see _fit)
_REFINED = 2  # shapes per object that get the pattern-search fit (see _refine)
_REFINE_MIN_STEP = 1 / 32  # px
_SIZE_SPLIT = math.sqrt(RADIUS["small"] * RADIUS["large"])  # enclosing radius between small and large


@dataclass(frozen=True)
class Detection:
    shape: str | None  # None: a blob no shape template fits
    colour: str
    size: str  # "small" | "large"
    position: str | None  # a region of POSITIONS, None in a corner
    cx: float  # centroid, normalised to [0, 1] (x right, y down)
    cy: float
    area: float  # coverage-weighted area as a fraction of the image
    error: float = 0.0  # template misfit of `shape` (L1 / area; 0 = perfect)

    @property
    def composition(self) -> tuple[str, str | None]:
        return (self.colour, self.shape)


# --------------------------------------------------------------------------- pixels


def _coverage(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and colour: position on the background->colour segment (clipped to [0, 1]) and distance from it."""
    direction = _PALETTE - _BACKGROUND  # (K, 3)
    offset = rgb[:, :, None, :] - _BACKGROUND  # (H, W, 1, 3)
    t = (offset * direction).sum(-1) / (direction ** 2).sum(-1)  # (H, W, K)
    t = np.clip(t, 0.0, 1.0)
    residual = np.linalg.norm(offset - t[..., None] * direction, axis=-1)
    return t, residual


def _core_colours(rgb: np.ndarray) -> np.ndarray:
    """Index of the palette colour each pixel is a core pixel of, or -1 (background, edge, noise)."""
    refs = np.concatenate([_PALETTE, _BACKGROUND[None]])  # background is index K
    dist = np.linalg.norm(rgb[:, :, None, :] - refs, axis=-1)
    nearest = dist.argmin(-1)
    core = (dist.min(-1) <= CORE_DISTANCE) & (nearest < len(_PALETTE))
    return np.where(core, nearest, -1)


# --------------------------------------------------------------------------- components

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _components(colour_of: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """8-connected components of equal colour index (>= 0): a label image (0 = none) and each label's colour."""
    h, w = colour_of.shape
    labels = np.zeros((h, w), dtype=np.int32)
    colours: list[int] = []
    for y0, x0 in zip(*np.nonzero(colour_of >= 0)):
        if labels[y0, x0]:
            continue
        colour = int(colour_of[y0, x0])
        colours.append(colour)
        label = len(colours)
        labels[y0, x0] = label
        queue = deque([(int(y0), int(x0))])
        while queue:
            y, x = queue.popleft()
            for dy, dx in _NEIGHBOURS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and not labels[ny, nx] and colour_of[ny, nx] == colour:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
    return labels, colours


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a moved by (dy, dx) with zero fill: out[y, x] = a[y - dy, x - dx]."""
    out = np.zeros_like(a)
    h, w = a.shape
    dst = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    src = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
    out[dst] = a[src]
    return out


def _grow_into_rims(labels: np.ndarray, colours: list[int], coverage: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Let components take neighbouring edge pixels that blend their colour with the background.

    All components grow one pixel per step at the same time, so a rim pixel
    between two same-colour objects goes to the nearer one.
    """
    if not colours:
        return labels
    colour_lut = np.array([-1, *colours])  # label -> colour index
    blend = (coverage >= HALO_MIN_COVERAGE) & (residual <= HALO_RESIDUAL)  # (H, W, K)
    labels = labels.copy()
    for _ in range(HALO_STEPS):
        grown = labels.copy()
        for dy, dx in _NEIGHBOURS:
            cand = _shift(labels, dy, dx)
            colour = colour_lut[cand]
            ok = (grown == 0) & (cand > 0)
            ok &= np.take_along_axis(blend, np.maximum(colour, 0)[..., None], axis=-1)[..., 0]
            grown[ok] = cand[ok]
        if np.array_equal(grown, labels):
            break
        labels = grown
    return labels


# --------------------------------------------------------------------------- shapes


def _polygon_area(points: list[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


_UNIT_AREA = {s: _polygon_area(_outline(s, 1.0)) for s in SHAPES}  # area of each shape with enclosing radius 1


def _template(shape: str, r: float, cx: float, cy: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Coverage of `shape` (enclosing radius r px, centroid (cx, cy) px) over box = (x0, y0, x1, y1).

    Drawn as `render` draws: supersampled polygon fill, box-filtered down.
    """
    x0, y0, x1, y1 = box
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    # Continuous pixel coordinates (pixel k spans [k, k+1)) -> PIL's, where supersampled pixel j's centre is j.
    points = [((cx + x - x0) * s - 0.5, (cy + y - y0) * s - 0.5) for x, y in _outline(shape, r)]
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    small = canvas.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _moments(cover: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """(area, cx, cy) in image pixels of a coverage map over box = (x0, y0, x1, y1)."""
    area = float(cover.sum())
    if area <= 0:
        return 0.0, 0.0, 0.0
    ys, xs = np.mgrid[box[1]:box[3], box[0]:box[2]].astype(np.float32) + 0.5  # pixel centres
    return area, float((cover * xs).sum()) / area, float((cover * ys).sum()) / area


def _misfit(observed: np.ndarray, template: np.ndarray) -> float:
    return float(np.abs(observed - template).sum())


def _fit(shape: str, observed: np.ndarray, box: tuple[int, int, int, int],
         area: float, cx: float, cy: float) -> tuple[float, tuple[float, float, float]]:
    """Moment-matched template of `shape`: (L1 misfit, (enclosing radius, cx, cy) in px).

    The rasteriser fills a polygon's boundary pixels, so a polygon drawn with the
    observed area and centroid comes out slightly larger and shifted; a few
    moment-matching steps remove most of that bias.
    """
    r, tx, ty = math.sqrt(area / _UNIT_AREA[shape]), cx, cy
    for _ in range(_FIT_STEPS):
        t_area, t_cx, t_cy = _moments(_template(shape, r, tx, ty, box), box)
        if t_area <= 0:
            break
        r *= math.sqrt(area / t_area)
        tx, ty = tx + cx - t_cx, ty + cy - t_cy
    return _misfit(observed, _template(shape, r, tx, ty, box)), (r, tx, ty)


def _refine(shape: str, observed: np.ndarray, box: tuple[int, int, int, int],
            misfit: float, params: tuple[float, float, float]) -> tuple[float, tuple[float, float, float]]:
    """Pattern search on (radius, cx, cy) from a moment-matched fit, minimising the L1 misfit.

    Moment matching is only as exact as the 1/SUPERSAMPLE-pixel rasteriser, and
    at 32 px the remaining misfit (~0.08 of the area) is as large as the
    difference between a small circle and a small hexagon; the search brings a
    correct template's misfit down to ~0.01.
    """
    step = 1.0 / SUPERSAMPLE
    while step >= _REFINE_MIN_STEP:
        moved = False
        for axis, sign in itertools.product(range(3), (-1.0, 1.0)):
            trial = list(params)
            trial[axis] += sign * step
            r, tx, ty = trial
            if r <= 0:
                continue
            m = _misfit(observed, _template(shape, r, tx, ty, box))
            if m < misfit - 1e-9:
                misfit, params, moved = m, (r, tx, ty), True
        if not moved:
            step /= 2
    return misfit, params


def _crop(a: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """a[y0:y1, x0:x1] for box = (x0, y0, x1, y1), zero where the box leaves the array."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), dtype=a.dtype)
    h, w = a.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[sy0:sy1, sx0:sx1]
    return out


def _classify_shape(cover: np.ndarray, area: float, cx: float, cy: float) -> tuple[str, float, float]:
    """(best shape, its misfit / area, its enclosing radius in px) for a coverage map of the whole image."""
    # The box may reach past the image: template coverage off the image then counts as misfit,
    # so a shape cannot "fit" a blob cut off by the border by growing beyond it.
    reach = max(math.sqrt(area / a) for a in _UNIT_AREA.values()) + 3
    box = (math.floor(cx - reach), math.floor(cy - reach), math.ceil(cx + reach), math.ceil(cy + reach))
    observed = _crop(cover, box)
    outside = area - float(observed.sum())  # coverage beyond the box counts as misfit for every shape
    fits = {s: _fit(s, observed, box, area, cx, cy) for s in SHAPES}
    # Only the two best candidates are close enough to need the (costlier) exact fit.
    for s in sorted(fits, key=lambda s: fits[s][0])[:_REFINED]:
        fits[s] = _refine(s, observed, box, *fits[s])
    best = min(fits, key=lambda s: fits[s][0])
    misfit, (r, _, _) = fits[best]
    return best, (misfit + outside) / area, r


# --------------------------------------------------------------------------- detect


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"detect takes a PIL image or a uint8 array, got {type(image).__name__}")
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """All shapes-world objects in `image`, ordered top to bottom, then left to right.

    Reliable from MIN_RELIABLE_SIZE (32) px per side; see the module docstring
    for the method.
    """
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    coverage, residual = _coverage(rgb)
    labels, colours = _components(_core_colours(rgb))
    labels = _grow_into_rims(labels, colours, coverage, residual)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5  # pixel centres
    side = math.sqrt(h * w)
    found = []
    for label, colour in enumerate(colours, start=1):
        cover = np.where(labels == label, coverage[:, :, colour], 0.0)
        area = float(cover.sum())
        if area < MIN_AREA * h * w:
            continue
        cx, cy = float((cover * xs).sum()) / area, float((cover * ys).sum()) / area
        shape, error, r = _classify_shape(cover, area, cx, cy)
        found.append(Detection(
            shape=shape if error <= MAX_SHAPE_ERROR else None,
            colour=COLOURS[colour],
            size="large" if r / side > _SIZE_SPLIT else "small",
            position=position_of(cx / w, cy / h),
            cx=cx / w, cy=cy / h, area=area / (h * w), error=error,
        ))
    return sorted(found, key=lambda d: (round(d.cy, 3), d.cx))


def describe(detections: list[Detection]) -> str:
    """'small red circle (left), large blue star (centre)' for reports; 'nothing' when empty."""
    if not detections:
        return "nothing"
    return ", ".join(f"{d.size} {d.colour} {d.shape or 'blob'} ({d.position or 'corner'})" for d in detections)

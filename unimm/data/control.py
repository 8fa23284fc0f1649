"""Control maps for ControlNet: the same code makes the training maps and the maps of user images.

- "edges": the image's gradient magnitude (central differences, the largest over
  the R, G and B channels, so colours of equal brightness still part), thresholded
  into white edges on black. Pure pixels: any picture has edges.
- "segmentation": a layout map. The evaluator's detector finds the objects;
  each is drawn filled where it was found, at its size, in a colour that
  names its shape (SEGMENT_RGB) on black, so the map fixes shape, place and
  size and leaves colour to the prompt. Objects of no known shape are drawn
  as their shape-less blob colour (white).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .corpus import SHAPES

CONTROL_TYPES = ("edges", "segmentation")
EDGE_THRESHOLD = 24.0  # channel steps (0-255) above this are edges; the world's colours differ by far more
SEGMENT_RGB = {shape: rgb for shape, rgb in zip(SHAPES, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0),
                                                         (255, 0, 255), (0, 255, 255)])}
UNKNOWN_RGB = (255, 255, 255)


def check_control_type(kind: str) -> str:
    if kind not in CONTROL_TYPES:
        raise ValueError(f"control_type must be one of {', '.join(CONTROL_TYPES)}, got {kind!r}")
    return kind


def map_for_model(picture: Image.Image, kind: str, size: int) -> Image.Image:
    """The `kind` map a size x size model is steered by: the picture resized to the model's size
    (bicubic), then mapped. Training data and user pictures both go through here."""
    return control_map(picture.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), kind)


def control_map(image: Image.Image, kind: str) -> Image.Image:
    """The `kind` control map of `image` (an RGB picture), the same size."""
    check_control_type(kind)
    image = image.convert("RGB")
    return edges(image) if kind == "edges" else segmentation(image)


def edges(image: Image.Image) -> Image.Image:
    rgb = np.asarray(image, dtype=np.float32)
    gy, gx = np.gradient(rgb, axis=(0, 1))
    on = np.hypot(gx, gy).max(-1) > EDGE_THRESHOLD
    return Image.fromarray((on * 255).astype(np.uint8), "L").convert("RGB")


def segmentation(image: Image.Image) -> Image.Image:
    from ..eval.detector import _UNIT_AREA, detect
    from .shapes import SUPERSAMPLE, _outline

    w, h = image.size
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (w * s, h * s), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for d in detect(image):
        shape = d.shape or "circle"  # a blob of no known shape: drawn round, in UNKNOWN_RGB
        r = math.sqrt(d.area * w * h / _UNIT_AREA[shape])  # enclosing radius (px) of the found area
        cx, cy = d.cx * w, d.cy * h
        points = [((cx + x) * s - 0.5, (cy + y) * s - 0.5) for x, y in _outline(shape, r)]
        draw.polygon(points, fill=SEGMENT_RGB[d.shape] if d.shape else UNKNOWN_RGB)
    return canvas.resize((w, h), Image.Resampling.NEAREST)

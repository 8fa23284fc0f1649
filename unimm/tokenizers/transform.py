"""The picture an image tokenizer reads: one transform, owned by the tokenizers.

Training targets, cached targets, round-trip checks and tokenizer training all
turn a PIL image into the same (3, S, S) tensor in [-1, 1] through here.
"""
from __future__ import annotations

import functools

import torch
from PIL import Image

from ..images import fit_square, to_tensor

HALF = (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1]
GREY = (127, 127, 127)  # padding, where the resize mode pads


def image_transform(image: Image.Image, size: int, resize_mode: str = "resize") -> torch.Tensor:
    """`image` as (3, size, size) in [-1, 1]: squashed to the square (or padded, per `resize_mode`)."""
    return to_tensor(fit_square(image, size, resize_mode, GREY), HALF, HALF)


class ImageTransformMixin:
    """`preprocess` / `transform` for an image tokenizer whose config has `image_size`."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return image_transform(image, self.config.image_size)

    @property
    def transform(self):
        """`preprocess` as a picklable function (for DataLoader workers)."""
        return functools.partial(image_transform, size=self.config.image_size)

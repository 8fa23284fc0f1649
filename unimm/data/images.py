"""Image-only datasets (for training image tokenizers): the shapes world or a folder of images."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..config import ConfigError
from ..images import load_image
from ..tokenizers.transform import image_transform

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def check_image_data_spec(spec: dict) -> None:
    """Name an unknown key of a `data:` section before any model is built."""
    import dataclasses

    from ..config import check_keys
    from .shapes import ShapesWorldConfig

    source = spec.get("source", "shapes")
    if source == "shapes":
        valid = {"source"} | {f.name for f in dataclasses.fields(ShapesWorldConfig)} - {"image_size"}
    elif source == "folder":
        valid = {"source", "path", "resize_mode"}
    else:
        raise ConfigError(f"unknown image data source {source!r}; choose 'shapes' or 'folder'")
    check_keys(spec, valid, f"data ({source})")


class ImageDataset(Dataset):
    """Images as (3, S, S) tensors in [-1, 1].

    source "shapes": the seeded shapes world (`num_samples`, `seed`, ...);
    source "folder": every image file under `path`, squashed or padded to S.
    Unreadable files in a folder are skipped and counted (`self.skipped`), never fatal.
    """

    def __init__(self, source: str, image_size: int, path: str | None = None, resize_mode: str = "resize", **shapes):
        self.image_size, self.resize_mode, self.source = image_size, resize_mode, source
        self.skipped: list[str] = []
        if source == "shapes":
            from .shapes import ShapesWorld

            self.world = ShapesWorld(image_size=image_size, **shapes)
            self.files = None
        elif source == "folder":
            if shapes:
                raise ConfigError(f"folder data takes no shapes-world options, got {', '.join(shapes)}")
            if not path or not Path(path).is_dir():
                raise ConfigError(f"image folder not found: {path}")
            self.files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ConfigError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
        else:
            raise ConfigError(f"unknown image data source {source!r}; choose 'shapes' or 'folder'")

    def __len__(self) -> int:
        return len(self.world) if self.files is None else len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.files is None:
            image = self.world.sample(i)["image"]
        else:
            image = self._read(i)
        return image_transform(image, self.image_size, self.resize_mode)  # what the tokenizer will read

    def _read(self, i: int):
        # A corrupt file is replaced by the next readable one and recorded.
        for j in range(len(self.files)):
            path = self.files[(i + j) % len(self.files)]
            try:
                return load_image(path)
            except (ValueError, OSError):
                if str(path) not in self.skipped:
                    self.skipped.append(str(path))
        raise ConfigError("no readable image in the folder")

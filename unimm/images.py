"""Image I/O and transforms shared by understanding, generation and the app."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

def load_image(image) -> Image.Image:
    """Open a path / PIL image / HxWxC uint8 array as RGB, with an error that names the problem.

    Other modes (RGBA, L, P, CMYK, I;16 ...) are converted; transparency is
    composited on white so a transparent background does not turn black.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise ValueError(f"{path} is a directory, not an image file")
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: not an image file PIL can open ({e})") from e
        except Image.DecompressionBombError as e:
            raise ValueError(f"image {path} is too large to open safely: {e}") from e
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image arrays must be HxW or HxWxC (C = 1, 3, 4) uint8, got {image.dtype} {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected an image path, PIL image or uint8 array, got {type(image).__name__}")
    if min(image.size) < 1:
        raise ValueError(f"the image is empty ({image.size[0]}x{image.size[1]} pixels)")
    return to_rgb(image)


def load_frames(video, max_frames: int = 8) -> list[Image.Image]:
    """A short clip as RGB frames: an animated image file (GIF, APNG, WebP) or a list of frames
    (paths, PIL images, arrays); more than `max_frames` are sampled evenly, first and last kept
    (the clips of LLaVA-OneVision-style video questions)."""
    if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1:
        raise ValueError(f"max_frames must be an int >= 1, got {max_frames!r}")
    if isinstance(video, (list, tuple)):
        frames = [load_image(f) for f in video]
    else:
        load_image(video)  # names a missing, unreadable or empty file or image
        frames = []
        with (Image.open(video) if isinstance(video, (str, os.PathLike)) else contextlib.nullcontext(video)) as im:
            for k in range(getattr(im, "n_frames", 1)):
                im.seek(k)
                frames.append(load_image(im.convert("RGBA") if im.mode == "P" else im.copy()))
    if not frames:
        raise ValueError("the clip has no frames")
    if len(frames) > max_frames:
        last = len(frames) - 1
        frames = [frames[round(k * last / (max_frames - 1))] for k in range(max_frames)] if max_frames > 1 else frames[:1]
    return frames


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greys (PIL opens 16-bit PNGs as I;16 or I): a fixed 65535 -> 255 scale,
        # not a per-image stretch, so a constant or dark image keeps its brightness.
        arr = np.asarray(image, dtype=np.float32) / 257.0
        return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int, mode: str, fill: tuple[int, int, int], min_side: int = 1) -> Image.Image:
    """Resize to size x size: squash ("resize") or keep aspect and pad ("pad").

    "pad" scales the longer side to `size`, keeps the shorter one at least
    `min_side` pixels and centres the result on a `fill` canvas (Janus's
    image processor: min_size 14, background = int(mean * 255)).
    """
    if mode == "resize":
        return image.resize((size, size), Image.BICUBIC)
    w, h = image.size
    scale = size / max(w, h)
    nw, nh = max(min_side, round(w * scale)), max(min_side, round(h * scale))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def to_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).cpu().numpy()]


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """`factor` times larger with nearest neighbour: every model pixel becomes a crisp block."""
    if factor < 1:
        raise ValueError(f"upscale factor must be >= 1, got {factor}")
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor),
                                                   Image.Resampling.NEAREST)


def captioned_grid(images, captions, factor: int = 2, columns: int = 4) -> Image.Image:
    """Tile images (nearest-neighbour upscaled by `factor`) with each caption written under its image,
    wrapped to the cell's width."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    images, captions = list(images), list(captions)
    if not images or len(images) != len(captions):
        raise ValueError(f"captioned_grid needs one caption per image, got {len(images)} images and {len(captions)} captions")
    cells = [upscale(im.convert("RGB"), factor) for im in images]
    w, h = max(c.width for c in cells), max(c.height for c in cells)
    font = ImageFont.load_default()
    chars = max(8, w // 6)  # the default bitmap font is ~6 px a character
    lines = [textwrap.wrap(c, chars) or [""] for c in captions]
    text_h = 12 * max(len(ls) for ls in lines) + 6
    pad, columns = 6, min(columns, len(cells))
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (cell, ls) in enumerate(zip(cells, lines)):
        x, y = pad + (k % columns) * (w + pad), pad + (k // columns) * (h + text_h + pad)
        sheet.paste(cell, (x, y))
        for i, line in enumerate(ls):
            draw.text((x, y + h + 3 + 12 * i), line, fill=(0, 0, 0), font=font)
    return sheet

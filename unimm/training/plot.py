"""Loss curves from training logs (OUTPUT/metrics.jsonl), drawn with PIL only.

    python -m unimm.training.plot runs/default/stage*/metrics.jsonl -o losses.png

Several logs are drawn one after another on one step axis (the stages of a
recipe), with a dashed line where each new log starts. PIL rather than
matplotlib keeps the dependency list short; a loss curve needs little more
than lines, ticks and a legend.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["read_metrics", "plot_losses", "main"]

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
DEFAULT_KEYS = ("und_loss", "gen_loss")


def read_metrics(path: str | Path) -> list[dict]:
    """The records of one metrics.jsonl by step (the last one of a repeated step); a clear error
    for a missing, empty or corrupt log."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n} is not JSON: {e}") from None
    if not rows:
        raise ValueError(f"{path} has no records")
    # A run resumed from a checkpoint logs the steps after it again: the later record wins.
    by_step = {r["step"]: r for r in rows if "step" in r}
    if not by_step:
        raise ValueError(f"{path} has no records with a 'step'")
    return [by_step[k] for k in sorted(by_step)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = max(hi - lo, 1e-12)
    raw = span / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks (as log10 values) between two log10 bounds; the plain ticks if the range is narrow."""
    ticks = [math.log10(m * 10 ** e) for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo <= t <= hi]
    return ticks if len(ticks) >= 3 else [math.log10(v) for v in _nice_ticks(10 ** lo, 10 ** hi) if v > 0]


def plot_losses(paths: Sequence[str | Path], out: str | Path, keys: Sequence[str] = DEFAULT_KEYS,
                size: tuple[int, int] = (720, 400), log_y: bool = True) -> Path:
    """Draw `keys` from the logs (concatenated on one step axis) into a PNG at `out`."""
    if not paths:
        raise ValueError("no metrics logs given")
    series: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    starts, offset = [], 0
    for p in paths:
        rows = read_metrics(p)
        starts.append(offset)
        for r in rows:
            for k in keys:
                v = r.get(k)
                if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not log_y):
                    series[k].append((offset + r["step"], float(v)))
        offset += max(r["step"] for r in rows)
    missing = [k for k, pts in series.items() if not pts]
    if missing:
        raise ValueError(f"no values for {', '.join(missing)} in {', '.join(map(str, paths))}")

    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    ys = [fy(v) for pts in series.values() for _, v in pts]
    y_lo, y_hi = min(ys), max(ys)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = 0.05 * (y_hi - y_lo)  # keep the curves off the frame
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = max(offset, 1)

    w, h = size
    left, right, top, bottom = 60, 16, 16, 40
    img = Image.new("RGB", size, (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (w - left - right) * x / x_hi, top + (h - top - bottom) * (1 - (fy(y) - y_lo) / (y_hi - y_lo)))

    d.rectangle((left, top, w - right, h - bottom), outline=(0, 0, 0))
    for s in starts[1:]:  # stage boundaries, dashed
        x = px(s, 10 ** y_lo if log_y else y_lo)[0]
        for y in range(top, h - bottom, 8):
            d.line((x, y, x, min(y + 4, h - bottom)), fill=(150, 150, 150))
    for t in _nice_ticks(0, x_hi):
        x = px(t, 10 ** y_lo if log_y else y_lo)[0]
        d.line((x, h - bottom, x, h - bottom + 4), fill=(0, 0, 0))
        d.text((x - 12, h - bottom + 6), f"{t:g}", fill=(0, 0, 0), font=font)
    d.text(((w - left) // 2, h - 14), "step", fill=(0, 0, 0), font=font)
    for t in (_log_ticks(y_lo, y_hi) if log_y else _nice_ticks(y_lo, y_hi)):
        value = 10 ** t if log_y else t
        y = px(0, value)[1]
        d.line((left - 4, y, left, y), fill=(0, 0, 0))
        d.text((4, y - 6), f"{value:.3g}", fill=(0, 0, 0), font=font)
    for i, (k, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        d.line([px(x, y) for x, y in pts] if len(pts) > 1 else [px(*pts[0])] * 2, fill=colour, width=2)
        d.rectangle((w - right - 110, top + 8 + 16 * i, w - right - 100, top + 18 + 16 * i), fill=colour)
        d.text((w - right - 94, top + 7 + 16 * i), k, fill=(0, 0, 0), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unimm.training.plot", description="Loss curves from metrics.jsonl logs.")
    p.add_argument("logs", nargs="+", help="metrics.jsonl files, drawn one after another (e.g. the stages)")
    p.add_argument("-o", "--output", default="losses.png")
    p.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="metrics to draw")
    p.add_argument("--linear", action="store_true", help="linear y axis (default: log)")
    args = p.parse_args(argv)
    try:
        out = plot_losses(args.logs, args.output, args.keys, log_y=not args.linear)
    except (ValueError, FileNotFoundError) as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

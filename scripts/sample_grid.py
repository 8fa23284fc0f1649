"""A captioned sample grid from a model, for the README: one image per prompt, upscaled with
nearest neighbour (crisp pixels), the prompt written under each image.

Usage: python scripts/sample_grid.py [--model default] [--out docs/default-samples.png]
       [--seed 0] [--scale 2] [--columns 4] [PROMPT ...]
"""
from __future__ import annotations

import argparse

PROMPTS = (
    "a blue triangle on the left", "a red square at the top", "a large yellow star", "a small green circle",
    "a purple hexagon in the centre", "an orange diamond at the bottom", "two white squares", "three red circles",
    "a blue star on the left and a yellow circle on the right", "a green triangle and a purple square",
    "a black hexagon on the right", "two large orange triangles",
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompts", nargs="*", default=list(PROMPTS))
    ap.add_argument("--model", default=None, help="model directory or shipped name (default: weights/default)")
    ap.add_argument("--out", default="docs/default-samples.png")
    ap.add_argument("--seed", type=int, default=0, help="image i is drawn with seed + i")
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale factor")
    ap.add_argument("--columns", type=int, default=4)
    args = ap.parse_args(argv)

    import unimm
    from unimm.images import captioned_grid

    pipe = unimm.load(args.model)
    images = [pipe.generate(p, seed=args.seed + i, progress=False)[0] for i, p in enumerate(args.prompts)]
    captioned_grid(images, args.prompts, args.scale, args.columns).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

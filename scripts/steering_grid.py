"""README pictures of a ControlNet and an IP-Adapter at work: each row a steering picture, what the
model read from it, and the image drawn (nearest-neighbour upscaled, captions under each).

Usage: python scripts/steering_grid.py [--model default-dit] [--out docs/default-dit-steering.png]
       [--rows 4] [--seed 0] [--scale 2]
Control rows: a shapes-world scene, its control map (as generate computed it) and the image drawn
from the map and the scene's caption. Reference rows: a reference picture, the image drawn from it
and a prompt that names a colour, and the image drawn from it alone (an empty prompt).
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-dit", help="model directory or shipped name")
    ap.add_argument("--out", default="docs/default-dit-steering.png")
    ap.add_argument("--rows", type=int, default=4, help="rows of each kind")
    ap.add_argument("--seed", type=int, default=0, help="scenes, references and sampling seeds start here")
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale factor")
    args = ap.parse_args(argv)

    import unimm
    from unimm.data.shapes import REFERENCE_SIZE, ShapesWorld, ShapesWorldConfig, reference_pair, render
    from unimm.images import captioned_grid

    pipe = unimm.load(args.model)
    head = pipe.model.gen_head
    size = pipe.image_size
    cells, captions = [], []
    for kind in getattr(head, "controlnets", {}):
        world = ShapesWorld(seed=10_000 + args.seed, num_samples=args.rows, image_size=size)
        for i in range(args.rows):
            scene = world[i]
            picture = render(scene, size)
            image = pipe.generate(scene.caption, control_image=picture, control_type=kind, seed=args.seed + i)[0]
            cells += [picture, image.info["control_maps"][kind], image]
            captions += ["control picture", f"its {kind} map", scene.caption]
    if getattr(head, "ip_adapter", None) is not None:
        cfg = ShapesWorldConfig(seed=10_000 + args.seed, image_size=size)
        for i in range(args.rows):
            target, ref = reference_pair(cfg, i)
            picture = render(ref, max(size, REFERENCE_SIZE))
            prompt = target.caption or f"a {target.objects[0].colour} object"
            drawn = pipe.generate(prompt, reference_image=picture, seed=args.seed + i)[0]
            again = pipe.generate("", reference_image=picture, seed=args.seed + i)[0]
            cells += [picture.resize((size, size)), drawn, again]
            captions += ["reference", f'"{prompt}"', "no prompt: the reference alone"]
    if not cells:
        raise SystemExit(f"{args.model} has no ControlNet and no IP-Adapter")
    captioned_grid(cells, captions, args.scale, 3).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

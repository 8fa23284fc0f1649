"""Does the generator tell captions apart? Ground-truth scenes scored under their own caption and
under captions with words changed (teacher forcing: the summed NLL of the image's tokens).

- shape: one-object scenes, the true shape word against each other shape (does the model know
  what the shape word means?);
- binding: two-object scenes, "a red circle and a blue star" against the swapped "a red star
  and a blue circle" (the same words bound to the other objects: does it know which colour
  goes with which shape, or only the bag of words?).

Usage: python benchmarks/caption_likelihood.py [--model weights/default] [--n 100] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an autoregressive model (default: the shipped default)")
    ap.add_argument("--n", type=int, default=100, help="scenes per test")
    ap.add_argument("--seed", type=int, default=977, help="shapes-world seed of the scenes")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    import unimm
    from unimm.data.shapes import SHAPES, ShapesWorld, swapped_caption
    from unimm.images import to_tensor
    from unimm.processing import left_pad

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = unimm.load(args.model, device="cpu", dtype="float32")
    model = pipe.model.eval()
    if not model.family.contrastive:
        raise SystemExit(f"the {model.family.name} paradigm has no exact image likelihood to compare captions with")
    size = model.image_tokenizer.config.image_size

    def nll(captions: list[str], image) -> torch.Tensor:
        """Summed NLL of `image`'s tokens under each caption (one batch)."""
        pixels = to_tensor(image.resize((size, size)), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))[None]
        ids, mask = left_pad([pipe.processor.generation_ids(c) for c in captions], model.token_ids.pad)
        targets = model.images_to_targets(pixels).expand(len(captions), -1)
        # contrast() scores rows 1.. of the batch under "swapped" prompts: here every other caption
        rows = torch.zeros(len(captions) - 1, dtype=torch.long)
        _, own, others = model.generation_contrast(ids[:1], mask[:1], targets[:1], ids[1:], mask[1:], rows)
        return torch.cat([own[:1], others])  # own repeats row 0 once per other caption

    results = {}
    with torch.no_grad():
        world = ShapesWorld(seed=args.seed, num_samples=10 * args.n, mix={"single": 1.0})
        wins, margins = 0, []
        for i in range(args.n):
            s = world.sample(i)
            shape = s["scene"].objects[0].shape
            others = [x for x in SHAPES if x != shape]
            v = nll([s["caption"]] + [s["caption"].replace(shape, x) for x in others], s["image"])
            wins += int(v[1:].min() > v[0])
            margins.append((v[1:].min() - v[0]).item())
        results["shape"] = (wins, margins)
        world = ShapesWorld(seed=args.seed + 1, num_samples=10 * args.n, mix={"pair": 1.0})
        wins, margins = 0, []
        for i in range(args.n):
            s = world.sample(i)
            v = nll([s["caption"], swapped_caption(s["scene"])], s["image"])
            wins += int(v[1] > v[0])
            margins.append((v[1] - v[0]).item())
        results["binding"] = (wins, margins)

    print(f"model: {args.model or 'default'}; {args.n} scenes per test (seed {args.seed})")
    what = {"shape": "true shape word beats every other shape", "binding": "true caption beats the swapped one"}
    for name, (wins, margins) in results.items():
        print(f"{name:8s} {what[name]}: {wins}/{args.n}; margin median {statistics.median(margins):.2f} nats, "
              f"mean {statistics.mean(margins):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

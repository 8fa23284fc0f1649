"""How fast can a vision tower of the default's shape learn shape at all? A supervised baseline.

The linear probes (probes.py) found the shipped SigLIP keeping little shape. This script asks
whether the architecture is the limit or the training signal: it trains, on single-object
shapes-world scenes with their shape as the label,

  vit   a SigLIP vision tower (transformers' SiglipVisionModel) of the model's encoder config,
        from random weights or from a model's trained tower (--init MODEL); the mean of its
        feature layer -> a linear classifier
  cnn   four 3x3 convolutions (stride 2 from the second) -> global max pool -> linear

with the same batches, optimizer and step count, and prints held-out accuracy along the way and
the number of steps each needed to reach --target. The shapes world renders at the tower's size.

Usage: python benchmarks/shape_learning.py [--model default] [--init random|MODEL] [--steps 1500]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


def scenes(seed: int, n: int, size: int):
    from unimm.data.corpus import SHAPES
    from unimm.data.shapes import ShapesWorld, render

    world = ShapesWorld(seed=seed, num_samples=n, mix={"single": 1.0})
    pixels = np.stack([np.asarray(render(world[i], size)) for i in range(n)])
    labels = [SHAPES.index(world[i].objects[0].shape) for i in range(n)]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.tensor(labels)


class TowerClassifier(torch.nn.Module):
    def __init__(self, tower: torch.nn.Module, width: int, feature_layer: int, classes: int):
        super().__init__()
        self.tower, self.feature_layer = tower, feature_layer
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x):
        states = self.tower(pixel_values=x, output_hidden_states=True).hidden_states
        return self.head(states[self.feature_layer].mean(1))


def conv_classifier(classes: int) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.GELU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def build_vit(model: str, init: str, classes: int) -> tuple[torch.nn.Module, int]:
    import unimm
    from transformers import SiglipVisionConfig, SiglipVisionModel

    pipe = unimm.load(model if init == "random" else init)
    enc = pipe.model.encoder
    cfg = SiglipVisionConfig(**enc.resolved_config().siglip) if init == "random" else None
    tower = SiglipVisionModel(cfg) if cfg is not None else enc.model.float()
    width = tower.config.hidden_size
    return TowerClassifier(tower.train(), width, enc.config.feature_layer, classes), tower.config.image_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="whose encoder config the ViT takes")
    ap.add_argument("--init", default="random", help="'random' or a model whose trained tower the ViT starts from")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train", type=int, default=16000, help="distinct training scenes")
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from unimm.data.corpus import SHAPES

    torch.manual_seed(args.seed)
    vit, size = build_vit(args.model, args.init, len(SHAPES))
    torch.manual_seed(args.seed)
    models = {"vit": vit, "cnn": conv_classifier(len(SHAPES))}
    # Seeds far from every training world and from the evaluator's.
    x_train, y_train = scenes(8_000_000 + args.seed, args.train, size)
    x_test, y_test = scenes(8_500_000 + args.seed, args.test, size)
    order = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, args.train, (args.batch,), generator=order) for _ in range(args.steps)]
    reached = {}
    for name, net in models.items():
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            idx = batches[step - 1]
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.every == 0 or step == args.steps:
                net.eval()
                with torch.no_grad():
                    pred = torch.cat([net(x_test[i:i + 250]).argmax(-1) for i in range(0, args.test, 250)])
                net.train()
                acc = (pred == y_test).float().mean().item()
                if acc >= args.target and name not in reached:
                    reached[name] = step
                print(f"{name} step {step:5d}  loss {loss.item():.3f}  held-out accuracy {acc:.3f}  "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    steps = {k: reached.get(k) for k in models}
    print(f"steps to {args.target:.0%} held-out: vit {steps['vit'] or f'> {args.steps}'}, "
          f"cnn {steps['cnn'] or f'> {args.steps}'}")


if __name__ == "__main__":
    main()

"""Where a cross-attention model looks when it answers: the blocks' attention on the object asked about.

    python benchmarks/grounding_attention.py --model runs/xattn-grounding/stage/final
    python benchmarks/grounding_attention.py --model tiny-xattn --n 16   # the smoke run

For one-question shapes-world items whose question is about one object ("What colour is the
circle?"), the share of the cross-attention blocks' attention (all blocks but the first, averaged
over heads), where the answer is predicted (or, `--at word`, all blocks at the question's word naming
the object), that falls on the visual tokens covering that object's box: the quantity `loss_weights.grounding` trains (UnifiedModel.grounding_shares), measured apart
on one-object scenes (any look at the object will do) and two-object scenes (the model must find
the named one; 50% is a split between both objects).
"""
from __future__ import annotations

import argparse
import warnings

import torch

import unimm
from unimm.data.formats import build_source
from unimm.training.data import Collator, TrainingDataset


def mass_on_object(pipe, kind: str, n: int, seed: int, at: str = "answer", batch: int = 32) -> float:
    """Mean attention share on the asked-about object over n items of scene kind `kind`."""
    model = pipe.model.eval()
    size = pipe.model.encoder.image_size
    source = build_source({"format": "shapes", "task": "understanding", "image_size": size, "num_samples": 4 * n,
                           "seed": seed, "questions": 1, "mix": {kind: 1.0}})
    data = TrainingDataset({"vqa": source}, {"vqa": 1}, pipe.processor, None, 4 * n, seed=seed)
    collate = Collator(model.token_ids.pad, lambda ids: ids, grounding=at)
    boxed = [s for s in (data[i] for i in range(4 * n)) if ("ground_at" if at == "word" else "ground") in s][:n]
    shares = []
    with torch.no_grad():
        for k in range(0, len(boxed), batch):
            *_, places = model._answer_logits(**collate(boxed[k:k + batch])["und"])  # [(blocks, rows)]
            shares.append(places[0].mean(0))
    return float(torch.cat(shares).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a cross-attention model: directory or config name")
    ap.add_argument("--n", type=int, default=256, help="items per scene kind")
    ap.add_argument("--seed", type=int, default=999, help="the scenes (not the training seeds)")
    ap.add_argument("--at", choices=("answer", "word"), default="answer",
                    help="where: the position predicting the answer, or the question's word naming the object")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
    pipe = unimm.load(a.model)
    if not pipe.model.layout.cross_attends:
        raise SystemExit(f"{a.model} has no cross-attention blocks: nothing to measure")
    print(f"model {a.model}, {a.n} items per kind, scenes seed {a.seed}, attention at the {a.at} position")
    print(f"{'scenes':12s} {'attention on the asked-about object':>36s}")
    for kind, name in (("single", "one object"), ("pair", "two objects")):
        print(f"{name:12s} {mass_on_object(pipe, kind, a.n, a.seed, a.at):36.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

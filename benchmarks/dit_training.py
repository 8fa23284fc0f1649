"""DiT training throughput, two comparisons, each run in one process (same data, seeds and weights).

`--compare conditioning` (the default): the generator conditioned by learnable queries vs by the
prompt's own states. A DiT stage trains with the backbone frozen. With `conditioning: queries`
(MetaQuery) the queries are learnt, so every step runs the backbone forward and backward to reach
them; with `conditioning: prompt_states` (Qwen-Image, OmniGen2) the condition is the frozen
backbone's states of the prompt, read forward only (VAE latents cached in both).

`--compare controlnet`: a ControlNet stage (configs/recipes/dit-controlnet.yaml on
weights/default-dit) making each item's edge map and encoding image and map with the VAE every
step, vs reading both from `data.cache_dir`, where they are made and encoded once.

`--compare ip_adapter`: an IP-Adapter stage (configs/recipes/dit-ip-adapter.yaml on
weights/default-dit) encoding each target with the VAE every step, vs reading the targets from
`data.cache_dir` (the reference pictures drawn again each read in both).

Each reports samples/s over the second half of each run, the ratio, and the flow loss at each half.

    python benchmarks/dit_training.py --steps 100 --set mixed_precision=bf16   # the recipe's DiT on weights/default
    python benchmarks/dit_training.py --compare controlnet --steps 60
    python benchmarks/dit_training.py --smoke                                 # tiny model, a few steps (run by the tests)
    python benchmarks/dit_training.py --compare controlnet --smoke
    python benchmarks/dit_training.py --compare ip_adapter --steps 60
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = {  # name -> ((row, variant), ...); the first row is the ratios' base
    "conditioning": (("queries (backbone fwd + bwd)", "queries"), ("prompt states (backbone fwd)", "prompt_states")),
    "controlnet": (("maps made + encoded every step", "plain"), ("maps encoded once (cache_dir)", "cached")),
    "ip_adapter": (("targets encoded every step", "plain"), ("targets encoded once (cache_dir)", "cached")),
}
# The steering stages: (recipe, tiny config for --smoke, their generation source).
STEERING = {"controlnet": ("dit-controlnet.yaml", "tiny-dit-controlnet.yaml", "t2i"),
            "ip_adapter": ("dit-ip-adapter.yaml", "tiny-dit-ip-adapter.yaml", "pairs")}


def _steering_stage(args, out: Path, cache: Path, variant: str) -> dict:
    from unimm.config import apply_overrides, read_config_file

    recipe, tiny, source = STEERING[args.compare]
    if args.smoke:
        stage = read_config_file(str(ROOT / "configs" / "train" / tiny))
    else:
        stage = read_config_file(str(ROOT / "configs" / "recipes" / recipe))
        stage["init_from"] = args.init_from or str(ROOT / "weights" / "default-dit")
    over = [f"output_dir={out}", f"steps={args.steps}", f"save_every={args.steps}",
            f"log_every={max(1, args.steps // 2)}", f"batch_size={args.batch_size}",
            f"data.sources.{source}.num_samples={args.gen_items}", *args.set]
    return apply_overrides(stage, over + ([f"data.cache_dir={cache}"] if variant == "cached" else []))


def _stage(args, out: Path, cache: Path, variant: str) -> dict:
    from unimm.config import apply_overrides, read_config_file

    if args.compare in STEERING:
        return _steering_stage(args, out, cache, variant)
    conditioning = variant
    if args.smoke:
        stage = read_config_file(str(ROOT / "configs" / "train" / "tiny-dit-stage1.yaml"))
        stage["model"] = {"base": "tiny-dit", "generation": {"generator": {"conditioning": conditioning}}}
    else:
        stage = read_config_file(str(ROOT / "configs" / "recipes" / "dit.yaml"))
        stage["init_from"] = args.init_from or str(ROOT / "weights" / "default")
        changes = stage["init_changes"]
        changes["image_tokenizer"]["checkpoint"] = str(ROOT / changes["image_tokenizer"]["checkpoint"])
        changes["generation"]["generator"]["conditioning"] = conditioning
    over = [f"output_dir={out}", f"steps={args.steps}", f"save_every={args.steps}",
            f"log_every={max(1, args.steps // 2)}", f"batch_size={args.batch_size}",
            f"data.sources.t2i.num_samples={args.gen_items}", f"data.cache_dir={cache}", *args.set]
    return apply_overrides(stage, over)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def run(args) -> dict:
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    torch.set_num_threads(args.threads)
    rows = {}
    variants = COMPARISONS[args.compare]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        for k, (name, variant) in enumerate(variants):
            stage = tmp / f"run{k}.json"
            stage.write_text(json.dumps(_stage(args, tmp / f"run{k}", cache, variant)))
            t = time.perf_counter()
            train(load_train_config(str(stage)), progress=False)
            wall = time.perf_counter() - t
            recs = _records(tmp / f"run{k}")
            rows[name] = {"samples_per_s": recs[-1]["samples_per_s"], "wall_s": wall,
                          "loss_by_half": [round(r["gen_loss"], 4) for r in recs]}
    base = rows[variants[0][0]]["samples_per_s"]
    print(f"{'':30s} {'samples/s':>10s} {'ratio':>6s} {'run (s)':>8s}  flow loss at each half")
    for name, r in rows.items():
        r["ratio"] = r["samples_per_s"] / base
        print(f"{name:30s} {r['samples_per_s']:10.1f} {r['ratio']:5.2f}x {r['wall_s']:8.1f}  {r['loss_by_half']}")
    print(f"{args.steps} steps of {args.batch_size}; samples/s over the second half (the run that caches "
          "includes the caching in its time)")
    return {"compare": args.compare, "rows": rows, "steps": args.steps, "batch_size": args.batch_size, "set": args.set}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", choices=sorted(COMPARISONS), default="conditioning")
    p.add_argument("--init-from", default=None,
                   help="the model to start from (default: weights/default; weights/default-dit for controlnet, ip_adapter)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gen-items", type=int, default=2000, help="scenes whose latents are cached")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a change to every run")
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: checks the script runs")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.gen_items = 4, 4, 32
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

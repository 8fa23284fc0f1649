"""Training throughput: a stage with the frozen tokenizer's targets cached vs encoded every step.

Runs the same stage (default: the recipe's stage 2 on the shipped default model)
twice in one process, without and with `data.cache_dir`, and reports samples/s,
their ratio, the one-off cost of building the cache, the FLOPs of one optimizer
step (counted by torch's FlopCounterMode) and the share of this machine's
measured matmul rate that a step reaches.

    python benchmarks/train_throughput.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --smoke         # tiny model, a few steps (run by the tests)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def matmul_rate(n: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a float32 n x n matmul on this machine (the best of a few tries)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * repeats / best


def _config(args, out: Path, cache: Path | None, steps: int):
    from unimm.config import read_config_file
    from unimm.training.config import load_train_config

    over = [f"output_dir={out}", f"steps={steps}", f"save_every={steps}", f"log_every={max(1, steps // 2)}",
            f"batch_size={args.batch_size}", f"data.sources.t2i.num_samples={args.gen_items}"]
    if args.smoke:
        over += ["model=tiny"]
    else:
        over += [f"init_from={args.init_from}"]
    if cache is not None:
        over.append(f"data.cache_dir={cache}")
    stage = ROOT / "configs" / ("train/tiny-stage2.yaml" if args.smoke else "recipes/stage2.yaml")
    data = read_config_file(str(stage))
    if args.smoke:
        del data["init_from"]  # a fresh tiny model instead of stage 1's export
    return load_train_config(data, over)


def samples_per_s(out: Path) -> float:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["samples_per_s"]  # the second half of the run: start-up excluded


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-from", default=str(ROOT / "weights" / "default"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gen-items", type=int, default=2000, help="generation items to cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: checks the script runs")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.gen_items = 4, 4, 32
    torch.set_num_threads(args.threads)
    from torch.utils.flop_counter import FlopCounterMode

    from unimm.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = {}
        train(_config(args, tmp / "plain", None, args.steps), progress=False)
        results["encode every step"] = samples_per_s(tmp / "plain")
        t = time.perf_counter()
        train(_config(args, tmp / "build", tmp / "cache", 1), progress=False)  # builds the cache (+ 1 step)
        build_s = time.perf_counter() - t
        train(_config(args, tmp / "cached", tmp / "cache", args.steps), progress=False)
        results["cached targets"] = samples_per_s(tmp / "cached")
        counter = FlopCounterMode(display=False)
        k = 2
        with counter:
            train(_config(args, tmp / "flops", tmp / "cache", k), progress=False)
        flops_per_sample = counter.get_total_flops() / (k * args.batch_size)
    peak = matmul_rate()
    rows = {name: {"samples_per_s": v, "flop_per_s": v * flops_per_sample, "fraction_of_matmul": v * flops_per_sample / peak}
            for name, v in results.items()}
    print(f"{'':22s} {'samples/s':>10s} {'GFLOP/s':>9s} {'of matmul':>10s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['samples_per_s']:10.1f} {r['flop_per_s'] / 1e9:9.2f} {r['fraction_of_matmul']:10.1%}")
    ratio = results["cached targets"] / results["encode every step"]
    print(f"ratio cached / every step: {ratio:.2f}x; cache built once in {build_s:.1f} s for {args.gen_items} items; "
          f"{flops_per_sample / 1e9:.3f} GFLOP per sample (model forward + backward); matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s on {args.threads} threads")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio, "cache_build_s": build_s,
                                               "gflop_per_sample": flops_per_sample / 1e9,
                                               "matmul_gflops": peak / 1e9}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

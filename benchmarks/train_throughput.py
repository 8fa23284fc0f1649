"""Training throughput: a stage with the frozen tokenizer's targets cached vs encoded every step,
and one process using every core vs one process per core.

`--compare cache` (the default) runs the same stage (default: the recipe's stage 2 on
the shipped default model) twice in one process, without and with `data.cache_dir`,
and reports samples/s, their ratio, the one-off cost of building the cache, the FLOPs
of one optimizer step (counted by torch's FlopCounterMode) and the share of this
machine's measured matmul rate that a step reaches.

`--compare processes` runs the stage (targets cached) as one process with all
`--threads` threads, then as `--threads` data-parallel processes of one thread each
(torchrun, gloo), the same samples per optimizer step split between them, and
reports samples/s, their ratio and the loss curves side by side: the training loss
at every sixth of the run (the main process's batch) and the loss of each final model
on the same evaluation batches.

`--compare compile` runs the stage (targets cached) eager and with `compile=True`;
`--compare precision` in float32 and with bf16 autocast (bf16 matrix products run
natively on CPUs with AVX512-BF16 or AMX; on other CPUs the trainer trains such a stage in
float32, and a third run keeps the emulated bf16 to show what that saves); `--compare fast` today's trainer (float32, each
batch's understanding rows padded to the longest), then `data.length_buckets=3`, then bf16
autocast too, then `data.pad_multiple=16` too, then `compile=true` too; `--compare pads` today's
trainer against all of them with `data.pad_multiple` 16, 32 and 64; `--compare pad` bf16
with and without `data.pad_multiple=16`. `--set KEY=VALUE` changes the stage for
every run (`--compare compile --set mixed_precision=bf16`: bf16 eager vs compiled).

    python benchmarks/train_throughput.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --compare processes
    python benchmarks/train_throughput.py --compare compile
    python benchmarks/train_throughput.py --compare precision --steps 300
    python benchmarks/train_throughput.py --compare fast --steps 300
    python benchmarks/train_throughput.py --smoke         # tiny model, a few steps (run by the tests)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from unimm.training.precision import ALLOW_EMULATED

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


def _config(args, out: Path, cache: Path | None, steps: int, extra: list[str] = (), init_from: Path | None = None):
    from unimm.training.config import load_train_config

    return load_train_config(_stage(args), _overrides(args, out, cache, steps, init_from) + list(extra))


def _stage(args) -> dict:
    from unimm.config import read_config_file

    data = read_config_file(str(ROOT / "configs" / ("train/tiny-stage2.yaml" if args.smoke else "recipes/stage2.yaml")))
    if args.smoke:
        del data["init_from"]  # a fresh tiny model instead of stage 1's export
    return data


def _overrides(args, out: Path, cache: Path | None, steps: int, init_from: Path | None = None) -> list[str]:
    over = [f"output_dir={out}", f"steps={steps}", f"save_every={steps}", f"log_every={max(1, steps // 2)}",
            f"batch_size={args.batch_size}", f"data.sources.t2i.num_samples={args.gen_items}"]
    if init_from is None and args.smoke:
        over += ["model=tiny"]
    else:
        over += [f"init_from={init_from or args.init_from}"]
    if cache is not None:
        over.append(f"data.cache_dir={cache}")
    return over


def samples_per_s(out: Path) -> float:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["samples_per_s"]  # the second half of the run: start-up excluded


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, tmp: Path, name: str, processes: int, threads: int, cache: Path, extra: list[str] = (),
            every: int = 6, env: dict | None = None) -> Path:
    """The stage as `processes` processes of `threads` threads each (a subprocess, so each
    start-up, and accelerate's once-per-process state, is its own), the same samples per
    optimizer step whatever the split; `extra`: changes to the stage; a log line every
    `every`-th of the run."""
    from unimm.config import apply_overrides

    out = tmp / name
    per_process = args.batch_size // processes
    over = _overrides(args, out, cache, args.steps) + [f"batch_size={per_process}",
                                                       f"log_every={max(1, args.steps // every)}", *extra]
    stage = tmp / f"{name}.json"
    stage.write_text(json.dumps(apply_overrides(_stage(args), over)))
    launcher = [sys.executable, "-m", "unimm.train"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(_free_port()), "-m", "unimm.train"]
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([*launcher, str(stage), "-q"], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        # the ranks' own errors come first, the launcher's summary last: keep both ends
        err = r.stderr if len(r.stderr) <= 6000 else f"{r.stderr[:3000]}\n[...]\n{r.stderr[-3000:]}"
        raise RuntimeError(f"{name} failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{err}")
    return out


def same_batches_loss(model_dir: Path, args, cache: Path, batches: int) -> float:
    """Mean loss of a trained model on `batches` fixed batches (another data order than
    training's; learning rate 0, so the weights do not move), one process: the same batches
    for every model compared."""
    from unimm.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        cfg = _config(args, out, cache, batches, ["optim.lr=0", "log_every=1", "data.prompt_dropout=0", "seed=12345",
                                                  "mixed_precision='no'"], init_from=model_dir)
        train(cfg, progress=False)
        losses = [r["loss"] for r in _records(out)]
    return sum(losses) / len(losses)


def compare_processes(args) -> dict:
    from unimm.training.trainer import train

    n = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        train(_config(args, tmp / "build", cache, 1), progress=False)  # both runs read the same cached targets
        runs = {f"1 process x {n} threads": _launch(args, tmp, "one", 1, n, cache),
                f"{n} processes x 1 thread": _launch(args, tmp, "many", n, 1, cache)}
        torch.set_num_threads(n)
        rows = {}
        for name, out in runs.items():
            recs = _records(out)
            rows[name] = {"samples_per_s": statistics.median(r["samples_per_s"] for r in recs[1:]),  # start-up out
                          "loss_by_window": [round(r["loss"], 4) for r in recs],
                          "same_batches_loss": same_batches_loss(out / "final", args, cache, args.eval_batches)}
    (a, ra), (b, rb) = rows.items()
    ratio = rb["samples_per_s"] / ra["samples_per_s"]
    print(f"{'':24s} {'samples/s':>10s} {'same-batch loss':>14s}  training loss every k steps (main process's batch)")
    for name, r in rows.items():
        print(f"{name:24s} {r['samples_per_s']:10.1f} {r['same_batches_loss']:14.4f}  {r['loss_by_window']}")
    print(f"ratio processes / threads: {ratio:.2f}x at {args.batch_size} samples per optimizer step, {args.steps} steps")
    return {"rows": rows, "ratio": ratio, "steps": args.steps, "batch_size": args.batch_size}


VARIANTS = {  # --compare: the runs, each (name, overrides on the stage), the first the baseline
    "compile": (("eager", []), ("compiled", ["compile=true"])),
    # bf16 as the trainer runs it (float32 on a CPU without native bf16), then bf16 kept even there
    "precision": (("float32", ["mixed_precision='no'"]), ("bf16 autocast", ["mixed_precision=bf16"]),
                  ("bf16, emulated kept", ["mixed_precision=bf16"], {ALLOW_EMULATED: "1"})),
    # today's trainer, then each speed option added in turn (issue 17's training bar)
    "fast": (("today", ["mixed_precision='no'", "data.length_buckets=1"]),
             ("length groups", ["mixed_precision='no'", "data.length_buckets=3"]),
             ("+ bf16", ["mixed_precision=bf16", "data.length_buckets=3"]),
             ("+ pad to 16", ["mixed_precision=bf16", "data.length_buckets=3", "data.pad_multiple=16"]),
             ("+ compile", ["mixed_precision=bf16", "data.length_buckets=3", "data.pad_multiple=16", "compile=true"])),
    # today's trainer, then everything on with lengths rounded up to 16, 32 and 64 tokens
    "pads": (("today", ["mixed_precision='no'", "data.length_buckets=1"]),
             *((f"all, pad to {k}", ["mixed_precision=bf16", "data.length_buckets=3", f"data.pad_multiple={k}",
                                     "compile=true"]) for k in (16, 32, 64))),
    # bf16 with and without lengths rounded up to a multiple of 16 (oneDNN's kernel cache)
    "pad": (("bf16", ["mixed_precision=bf16", "data.length_buckets=3"]),
            ("bf16, pad to 16", ["mixed_precision=bf16", "data.length_buckets=3", "data.pad_multiple=16"])),
}


def compare_variants(args) -> dict:
    """The stage (targets cached) once per variant of `--compare` (eager vs `compile=True`; float32
    vs bf16 autocast), `--set` applied to all; samples/s over the run's last third, so the one-off
    compilation (and any recompilation for a new sequence length) stays out of it; the training
    loss at each third, and each final model's float32 loss on the same fixed batches."""
    from unimm.training.trainer import train

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        train(_config(args, tmp / "build", cache, 1), progress=False)
        for k, (name, extra, *env) in enumerate(VARIANTS[args.compare]):
            t = time.perf_counter()  # each run its own process: accelerate fixes the precision once per process
            out = _launch(args, tmp, f"run{k}", 1, args.threads, cache, [*args.set, *extra], every=3,
                          env=env[0] if env else None)
            recs = _records(out)
            rows[name] = {"samples_per_s": recs[-1]["samples_per_s"], "wall_s": time.perf_counter() - t,
                          "loss_by_window": [round(r["loss"], 4) for r in recs],
                          "same_batches_loss": same_batches_loss(out / "final", args, cache, args.eval_batches)}
    base = next(iter(rows))
    print(f"{'':20s} {'samples/s':>10s} {'ratio':>6s} {'run (s)':>8s} {'same-batch loss':>15s}  "
          "training loss at each third")
    for name, r in rows.items():
        r["ratio"] = r["samples_per_s"] / rows[base]["samples_per_s"]
        print(f"{name:20s} {r['samples_per_s']:10.1f} {r['ratio']:5.2f}x {r['wall_s']:8.1f} "
              f"{r['same_batches_loss']:15.4f}  {r['loss_by_window']}")
    print(f"ratios against {base} over the last third of {args.steps} steps (run times include start-up and any compiling)")
    return {"rows": rows, "steps": args.steps, "batch_size": args.batch_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-from", default=str(ROOT / "weights" / "default"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--gen-items", type=int, default=2000, help="generation items to cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare", choices=("cache", "processes", *VARIANTS), default="cache")
    p.add_argument("--eval-batches", type=int, default=10, help="evaluation batches per model (all but --compare cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a change to the stage for every run (--compare compile / precision)")
    p.add_argument("--smoke", action="store_true", help="tiny model, 6 steps: checks the script runs")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.gen_items, args.eval_batches = 6, 4, 32, 2
    if args.compare == "processes" and (args.threads < 2 or args.batch_size % args.threads):
        p.error("--compare processes needs --threads >= 2 dividing --batch-size")
    if args.compare != "cache":
        result = compare_processes(args) if args.compare == "processes" else compare_variants(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
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

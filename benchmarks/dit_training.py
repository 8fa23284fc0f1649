"""DiT training throughput: the backbone's prompt states kept per prompt vs read every step, and
the learnable-query design beside them.

A DiT stage trains with the backbone frozen. With `conditioning: queries` (MetaQuery) the
queries are learnt, so every step runs the backbone forward and backward to reach them. With
`conditioning: prompt_states` the condition is the frozen backbone's states of the prompt, a
fixed function of it: the head keeps them per prompt (`DiTHead.states_memo`) and a step runs
the backbone only for prompts it has not read yet. This runs the same stage three ways in one
process (same data, seeds and generator; VAE latents cached) and reports samples/s over the
second half of each run, the ratio against the query design, and the loss curves (the two
prompt-state runs must agree: the memo changes where states come from, not their values). The
run that reads every step sets `STATES_MEMO_BYTES` to 0, which is the code path without a memo.

    python benchmarks/dit_training.py --steps 200                  # the recipe's DiT on weights/default
    python benchmarks/dit_training.py --steps 200 --set mixed_precision=bf16
    python benchmarks/dit_training.py --smoke                      # tiny model, a few steps (run by the tests)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (  # (name, conditioning, keep states)
    ("queries (backbone every step)", "queries", True),
    ("prompt states, read every step", "prompt_states", False),
    ("prompt states, kept per prompt", "prompt_states", True),
)


def _stage(args, out: Path, cache: Path, conditioning: str) -> dict:
    from unimm.config import apply_overrides, read_config_file

    if args.smoke:
        stage = read_config_file(str(ROOT / "configs" / "train" / "tiny-dit-stage1.yaml"))
        stage["model"] = {"base": "tiny-dit", "generation": {"generator": {"conditioning": conditioning}}}
    else:
        stage = read_config_file(str(ROOT / "configs" / "recipes" / "dit.yaml"))
        stage["init_from"] = args.init_from
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
    import unimm.heads.dit as dit
    from unimm.training.config import load_train_config
    from unimm.training.trainer import train

    torch.set_num_threads(args.threads)
    rows = {}
    budget = dit.STATES_MEMO_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        for k, (name, conditioning, keep) in enumerate(VARIANTS):
            stage = tmp / f"run{k}.json"
            stage.write_text(json.dumps(_stage(args, tmp / f"run{k}", cache, conditioning)))
            dit.STATES_MEMO_BYTES = budget if keep else 0
            try:
                t = time.perf_counter()
                train(load_train_config(str(stage)), progress=False)
                wall = time.perf_counter() - t
            finally:
                dit.STATES_MEMO_BYTES = budget
            recs = _records(tmp / f"run{k}")
            rows[name] = {"samples_per_s": recs[-1]["samples_per_s"], "wall_s": wall,
                          "loss_by_half": [round(r["gen_loss"], 4) for r in recs]}
    base = rows[VARIANTS[0][0]]["samples_per_s"]
    print(f"{'':32s} {'samples/s':>10s} {'ratio':>6s} {'run (s)':>8s}  flow loss at each half")
    for name, r in rows.items():
        r["ratio"] = r["samples_per_s"] / base
        print(f"{name:32s} {r['samples_per_s']:10.1f} {r['ratio']:5.2f}x {r['wall_s']:8.1f}  {r['loss_by_half']}")
    read, kept = (rows[v[0]]["loss_by_half"] for v in VARIANTS[1:])
    agree = all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(read, kept))
    print(f"{args.steps} steps of {args.batch_size}; samples/s over the second half (the first run's time "
          "includes caching the VAE latents)")
    print(f"prompt-state losses agree (kept vs read every step): {'yes' if agree else 'NO'}")
    return {"rows": rows, "steps": args.steps, "batch_size": args.batch_size, "set": args.set, "losses_agree": agree}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init-from", default=str(ROOT / "weights" / "default"))
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

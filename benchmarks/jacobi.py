"""Sequential vs speculative Jacobi decoding of image tokens, side by side in one run.

    python benchmarks/jacobi.py                      # the shipped default, batch 1 and 16
    python benchmarks/jacobi.py --model tiny --batches 1 --repeats 1   # the smoke run

For each batch size the same prompts are sampled both ways (temperature and
guidance as the model ships them, each repeat with its own seed): images/s,
backbone passes per image (the prefill included; a batch shares its passes)
and their ratios. Greedy decoding is checked to give identical ids. Jacobi
decoding trades passes for work per pass (a window of tokens each), so it
wins where a pass is bound by reading the weights (one image at a time, and
GPUs generally) and loses where the arithmetic is the limit (large batches on
a CPU); both show here.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
import warnings

import torch

import unimm
from unimm.processing import left_pad
from unimm.sampling.autoregressive import generate_image_tokens
from unimm.sampling.jacobi import generate_image_tokens_jacobi

PROMPTS = ["a blue triangle on the left", "two red squares", "a yellow star at the top", "a green circle",
           "three purple hexagons", "a white diamond and an orange circle", "a large black star", "a small red circle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name, directory or config (default: the shipped default)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore", unimm.UntrainedModelWarning)
    pipe = unimm.load(a.model) if a.model else unimm.load()
    model = pipe.model
    opts = pipe.sampling_options()
    kw = dict(guidance_scale=opts.guidance_scale, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p)
    N = model.num_image_tokens
    print(f"\nSequential vs Jacobi decoding ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    print(f"machine : {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}, "
          f"torch {torch.__version__}")
    print(f"model   : {a.model or 'default'}, {N} image tokens, {kw}, window {a.window}, {a.repeats} repeats, medians")
    print(f"{'batch':>5s} {'decoding':>10s} {'images/s':>9s} {'passes/image':>13s}")
    for batch in a.batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        ids, mask = left_pad([pipe.processor.generation_ids(p) for p in prompts], model.token_ids.pad)
        greedy = dict(kw, temperature=0)
        same = torch.equal(generate_image_tokens(model, ids, mask, **greedy),
                           generate_image_tokens_jacobi(model, ids, mask, window=a.window, **greedy))
        if not same:
            raise SystemExit("greedy Jacobi ids differ from the sequential loop's")
        times = {"sequential": [], "jacobi": []}
        passes = []
        generate_image_tokens(model, ids[:1], mask[:1], **kw)  # warm-up
        for r in range(a.repeats):
            start = time.perf_counter()
            generate_image_tokens(model, ids, mask, generator=torch.Generator().manual_seed(r), **kw)
            times["sequential"].append(time.perf_counter() - start)
            stats = {}
            start = time.perf_counter()
            generate_image_tokens_jacobi(model, ids, mask, generator=torch.Generator().manual_seed(r),
                                         window=a.window, stats=stats, **kw)
            times["jacobi"].append(time.perf_counter() - start)
            passes.append(stats["passes"])
        rate = {k: batch / statistics.median(v) for k, v in times.items()}
        # Sequential: the prefill and N - 1 steps, N passes shared by the batch.
        per_image = {"sequential": N / batch, "jacobi": statistics.median(passes) / batch}
        for k in ("sequential", "jacobi"):
            print(f"{batch:5d} {k:>10s} {rate[k]:9.2f} {per_image[k]:13.2f}")
        print(f"ratio batch {batch}: jacobi / sequential images/s = {rate['jacobi'] / rate['sequential']:.2f}, "
              f"passes sequential / jacobi = {per_image['sequential'] / per_image['jacobi']:.2f} "
              f"(greedy ids identical)")


if __name__ == "__main__":
    main()

"""Best-of-N generation against plain sampling, in one run: the time it costs per image.

    python benchmarks/best_of.py                      # the shipped default, N = 1, 4, 8
    python benchmarks/best_of.py --model default-dit --best-of 1 8
    python benchmarks/best_of.py --model tiny --repeats 1   # the smoke run

For each N, `generate(prompts, best_of=N)` is timed (median of --repeats, after one
untimed warm-up call) for one prompt (the latency `unimm generate` waits) and for a batch of
--batch prompts (throughput), and the share of that time spent judging the candidates
(unimm.pipelines.rerank.caption_logprobs) is measured on the same candidates. What N buys
in quality is measured by `unimm eval --best-of N` (BENCHMARKS.md), not here.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

import unimm
from unimm.pipelines.rerank import caption_logprobs

PROMPTS = ["a red circle on the left", "two blue squares", "a yellow star and a green triangle",
           "three purple hexagons", "a large white diamond", "an orange circle at the top",
           "a black square and a red star", "two green triangles"]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--best-of", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batch", type=int, default=8, help="prompts per throughput call")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pipe = unimm.load(args.model)
    batch = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    question = pipe.config.sampling.best_of_question
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model {args.model} ({pipe.config.generation.paradigm}, "
          f"{pipe.image_size} px)")
    print(f"{'best_of':>7} {'1 image s':>10} {'x plain':>8} {f'{args.batch} images s':>12} {'x plain':>8} "
          f"{'judging':>8}")
    base = None
    for n in args.best_of:
        one = timed(lambda: pipe.generate(batch[0], best_of=n, seed=0), args.repeats)
        many = timed(lambda: pipe.generate(batch, best_of=n, seed=0), args.repeats)
        if n > 1:
            drawn = pipe.generate(batch, num_images=n, seed=0, best_of=1)
            captions = [p for p in batch for _ in range(n)]
            judge = timed(lambda: caption_logprobs(pipe.model, pipe.processor, drawn, captions, question, 16),
                          args.repeats)
        else:
            judge = 0.0
        base = base or (one, many)
        print(f"{n:>7} {one:>10.2f} {one / base[0]:>7.2f}x {many:>12.2f} {many / base[1]:>7.2f}x "
              f"{judge / many:>7.0%}")


if __name__ == "__main__":
    main()

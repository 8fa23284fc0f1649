"""How often the evaluator accepts a model's image of one prompt, over seeds 0..n-1 (as
`unimm generate PROMPT --seed S` then `unimm eval --check` would, one seed at a time).

Usage: python scripts/seed_pass_rate.py [--model default] [--n 50] [PROMPT]
"""
from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="?", default="a blue triangle on the left")
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args(argv)

    import unimm
    from unimm.eval.detector import detect
    from unimm.eval.generation import score
    from unimm.eval.prompts import parse_prompt

    pipe = unimm.load(args.model)
    prompt = parse_prompt(args.prompt)
    passed = []
    for seed in range(args.n):
        image = pipe.generate(args.prompt, seed=seed, progress=False)[0]
        if score(prompt, detect(image))[0]:
            passed.append(seed)
    print(f"{args.prompt!r}: {len(passed)} of seeds 0-{args.n - 1} pass "
          f"({100 * len(passed) / args.n:.0f}%); seed 0 {'passes' if 0 in passed else 'fails'}")
    print("passing seeds:", passed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

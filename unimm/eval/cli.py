"""`unimm eval`: score a model on shapes-world generation (detector-checked) and VQA.

    unimm eval [--model M] [--task generation|vqa|all] [--n 400] [--seed 0]
               [--out report.json] [--grid grid.png] [--batch-size 32]
    unimm eval --check IMAGE PROMPT      # one image against its prompt; exit 0 on a pass

--n is the number of prompts for generation (split evenly over the four
categories) and the number of questions for VQA.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..console import check_image_format, check_output_file
from .prompts import CATEGORIES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_sampling_flags  # one set of sampling flags for every command
    from ..console import Parser

    p = Parser(
        prog="unimm eval",
        description="Score a model on shapes-world text-to-image (checked by a model-free detector) and VQA.")
    from ..cli import model_args

    model_args(p)
    p.add_argument("--task", default="all",
                   choices=["generation", "vqa", "all", "tokenizer", "control", "reference", "hallucination",
                            "multi-image"],
                   help="tokenizer: score ground-truth images after a trip through the model's image "
                        "tokenizer, the ceiling it sets on the generation score; control / reference: "
                        "adherence to ControlNet maps / IP-Adapter references, and to the prompt, apart; "
                        "hallucination: objects and counts the model's descriptions of scenes get wrong; "
                        "multi-image: questions over two scenes or the frames of a clip")
    p.add_argument("--control-type", default=None, choices=["edges", "segmentation"],
                   help="--task control: the map to steer with (default: the model's only ControlNet)")
    p.add_argument("--control-scale", type=float, default=None, metavar="S",
                   help="--task control: the ControlNet's weight (default 1)")
    p.add_argument("--reference-scale", type=float, default=None, metavar="S",
                   help="--task reference: the reference's weight (default: the IP-Adapter's)")
    p.add_argument("--n", type=int, default=400,
                   help="generation prompts (a multiple of 4), VQA questions and scenes described")
    p.add_argument("--seed", type=int, default=0, help="picks the prompts, sampling seeds and VQA scenes")
    p.add_argument("--out", default="report.json", help="JSON report path (default: report.json)")
    p.add_argument("--grid", default=None, help="PNG of generated images with pass/fail frames")
    p.add_argument("--batch-size", type=int, default=32, help="images generated per call")
    p.add_argument("--images-per-prompt", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=8, help="VQA answer length cap")
    add_sampling_flags(p)  # the generation families' options, as `unimm generate` has them
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--check", nargs=2, metavar=("IMAGE", "PROMPT"), default=None,
                   help="check one image against a prompt with the detector (no model is loaded); "
                        "prints what was found and exits 0 on a pass, 1 on a fail")
    return p


def check_image(image_path: str, prompt_text: str) -> tuple[bool, str]:
    """(passes, report line) for one image file against an evaluator-style prompt."""
    from ..images import load_image
    from .detector import describe, detect
    from .generation import score
    from .prompts import parse_prompt

    prompt = parse_prompt(prompt_text)
    if prompt is None:
        raise ValueError(f"cannot score {prompt_text!r}: the evaluator reads prompts like 'a red circle', "
                         "'a red circle on the left', 'two red circles' or 'a red circle and a blue square'")
    image = load_image(image_path)  # a missing, unreadable, truncated or oversized file is named
    found = detect(image)
    ok, why = score(prompt, found)
    verdict = "PASS" if ok else f"FAIL ({why})"
    return ok, f"{verdict}: {image_path} ({image.width}x{image.height}) for {prompt_text!r}; found {describe(found)}"


def _check(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, or None."""
    if args.n < 1:
        return f"--n must be >= 1, got {args.n}"
    if args.task in ("generation", "all", "tokenizer") and args.n < len(CATEGORIES):
        return f"--n must be >= {len(CATEGORIES)} for generation (one prompt per category), got {args.n}"
    if args.seed < 0:
        return f"--seed must be >= 0, got {args.seed}"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1, got {args.batch_size}"
    if args.images_per_prompt < 1:
        return f"--images-per-prompt must be >= 1, got {args.images_per_prompt}"
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if args.grid is not None and args.task not in ("generation", "all", "tokenizer"):
        return "--grid shows generated images; it needs --task generation, all or tokenizer"
    if args.control_type is not None and args.task != "control":
        return "--control-type goes with --task control"
    for flag, value, task in (("--control-scale", args.control_scale, "control"),
                              ("--reference-scale", args.reference_scale, "reference")):
        if value is not None and args.task != task:
            return f"{flag} goes with --task {task}"
        if value is not None and not value >= 0:
            return f"{flag} must be >= 0, got {value}"
    for flag, path in (("--out", args.out), ("--grid", args.grid)):
        if path is not None:  # checked before minutes of evaluation, not after
            try:
                check_output_file(path, flag)
                if flag == "--grid":
                    check_image_format(Path(path), flag)
            except ValueError as e:
                return str(e)
    return None


def _load(args: argparse.Namespace):
    from ..cli import load_model

    return load_model(args)


def _pct(x: float) -> str:
    return f"{100 * x:6.1f}%"


def _table(title: str, rows: dict[str, dict[str, Any]], overall: float, total_correct: int, total: int) -> list[str]:
    width = max(len(k) for k in [*rows, "overall"]) + 2
    lines = [title, f"  {'':{width}}accuracy  correct"]
    lines += [f"  {k:{width}}{_pct(v['accuracy'])}  {v['correct']:>4}/{v['n']}" for k, v in rows.items()]
    lines.append(f"  {'overall':{width}}{_pct(overall)}  {total_correct:>4}/{total}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The readable tables printed after a run."""
    lines = [f"model: {report['model']}  seed: {report['seed']}"]
    if gen := report.get("generation"):
        w, h = gen["image_size"]
        speed = f"{gen['images_per_s']:.2f} images/s" if gen["images_per_s"] else "-"
        best = f", each the best of {gen['best_of']} drawn" if gen.get("best_of", 1) > 1 else ""
        lines += [""] + _table(
            f"generation: {gen['num_images']} images at {w}x{h} px{best}, sampling {gen['time_s']:.1f} s ({speed})",
            gen["categories"], gen["accuracy"], sum(c["correct"] for c in gen["categories"].values()), gen["num_images"])
        if not gen["detector_reliable"]:
            lines.append("  note: images are smaller than the detector's validated size; scores are unreliable")
    if tok := report.get("tokenizer"):
        w, h = tok["image_size"]
        lines += [""] + _table(
            f"tokenizer round trip: {tok['num_images']} ground-truth images at {w}x{h} px "
            "(the ceiling on the generation score)",
            tok["categories"], tok["accuracy"], sum(c["correct"] for c in tok["categories"].values()), tok["num_images"])
    for task, what in (("control", "control map"), ("reference", "reference")):
        if res := report.get(task):
            best = f", each the best of {res['best_of']} drawn" if res.get("best_of", 1) > 1 else ""
            lines += ["", f"{task}: {res['num_images']} images at {res['image_size']} px (world seed "
                          f"{res['world_seed']}){best}, {res['time_s']:.1f} s",
                      f"  {what + ' adherence':24s}{_pct(res[task + '_adherence'])}",
                      f"  {'prompt adherence':24s}{_pct(res['prompt_adherence'])}",
                      f"  {'both':24s}{_pct(res['both'])}"]
    if hal := report.get("hallucination"):
        lines += ["", f"hallucination: {hal['num_scenes']} scenes described at {hal['image_size']} px (world seed "
                      f"{hal['world_seed']}), {hal['time_s']:.1f} s",
                  f"  {'descriptions with a hallucinated object or count':50s}{_pct(hal['hallucination_rate'])}",
                  f"  {'named objects not in the scene (CHAIR_i)':50s}{_pct(hal['object_rate'])}",
                  f"  {'wrong counts':50s}{_pct(hal['count_error_rate'])}",
                  f"  {'complete and correct descriptions':50s}{_pct(hal['complete_rate'])}"]
    if multi := report.get("multi_image"):
        lines += [""] + _table(
            f"multi-image: {multi['num_questions']} questions over two scenes or {multi['frames']}-frame clips at "
            f"{multi['image_size']} px (world seed {multi['world_seed']}), {multi['time_s']:.1f} s", multi["types"],
            multi["accuracy"], multi["correct"], multi["num_questions"])
    if vqa := report.get("vqa"):
        lines += [""] + _table(
            f"vqa: {vqa['num_questions']} questions at {vqa['image_size']} px (world seed {vqa['world_seed']}), "
            f"{vqa['time_s']:.1f} s", vqa["types"], vqa["accuracy"], vqa["correct"], vqa["num_questions"])
        lines.append("  by scene kind:")
        for kind, res in vqa.get("scenes", {}).items():
            types = ", ".join(f"{t} {r['correct']}/{r['n']}" for t, r in res["types"].items())
            lines.append(f"    {kind:10s}{res['correct']:>4}/{res['n']:<4} ({types})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..cli import sampling_kwargs
    from .generation import evaluate_generation
    from .vqa import evaluate_vqa

    pipe = _load(args)
    report: dict[str, Any] = {"model": args.model or "default", "seed": args.seed}
    if args.task in ("generation", "all"):
        per_category = args.n // len(CATEGORIES)
        if per_category * len(CATEGORIES) != args.n:
            print(f"note: --n {args.n} is not a multiple of {len(CATEGORIES)}; "
                  f"using {per_category} prompts per category", file=sys.stderr)
        report["generation"] = evaluate_generation(
            pipe, n_per_category=per_category, seed=args.seed, images_per_prompt=args.images_per_prompt,
            batch_size=args.batch_size, grid=args.grid, progress=not args.quiet, **sampling_kwargs(args, pipe))
    if args.task == "tokenizer":
        from .oracle import RoundTripPipe

        report["tokenizer"] = evaluate_generation(
            RoundTripPipe(pipe), n_per_category=max(1, args.n // len(CATEGORIES)), seed=args.seed,
            batch_size=args.batch_size, grid=args.grid, progress=not args.quiet, warmup=False)
    if args.task in ("control", "reference"):
        from .steering import evaluate_control, evaluate_reference

        if args.task == "control":
            scale = {} if args.control_scale is None else {"control_scale": args.control_scale}
            report["control"] = evaluate_control(pipe, n=args.n, seed=args.seed, control_type=args.control_type,
                                                 progress=not args.quiet, **scale, **sampling_kwargs(args, pipe))
        else:
            scale = {} if args.reference_scale is None else {"reference_scale": args.reference_scale}
            report["reference"] = evaluate_reference(pipe, n=args.n, seed=args.seed, progress=not args.quiet,
                                                     **scale, **sampling_kwargs(args, pipe))
    if args.task == "hallucination":
        from .hallucination import evaluate_hallucination

        report["hallucination"] = evaluate_hallucination(pipe, n=args.n, seed=args.seed, progress=not args.quiet)
    if args.task == "multi-image":
        from .vqa import evaluate_multi_image

        report["multi_image"] = evaluate_multi_image(pipe, n=args.n, seed=args.seed,
                                                     max_new_tokens=args.max_new_tokens, progress=not args.quiet)
    if args.task in ("vqa", "all"):
        report["vqa"] = evaluate_vqa(pipe, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens,
                                     progress=not args.quiet)
    return report


def main(argv: list[str] | None = None) -> int:
    from ..console import guarded

    return guarded("unimm eval", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # a wrapper may pass "eval -- ARGS" to keep its own parser off our options
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help)
        return int(e.code or 0)
    if args.check is not None:
        ok, line = check_image(*args.check)
        print(line)
        return 0 if ok else 1
    if problem := _check(args):
        parser.error(problem)
    report = run(args)  # a bad model name, option or file: one line from `guarded`
    print(format_report(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nreport: {out}" + (f"\ngrid: {args.grid}" if args.grid else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

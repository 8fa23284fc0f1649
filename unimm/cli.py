"""`unimm` command line: thin wrappers around the Python API."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def model_args(p: argparse.ArgumentParser) -> None:
    """The options that choose and place a model: every command that opens one takes them."""
    p.add_argument("--model", default=None,
                   help="model directory, config file or config name (default: the shipped model in weights/default, "
                        "or $UNIMM_MODEL)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--attach", action="append", default=[], metavar="DIR",
                   help="add a ControlNet or IP-Adapter trained on another model (its controlnet_<type>/ or "
                        "ip_adapter/ folder, or a model directory holding them); repeat for several")


def load_model(args):
    """The pipeline `model_args` describe."""
    import torch

    import unimm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = unimm.load(args.model, device=device, dtype=args.dtype)
    for path in args.attach:
        pipe.attach(path)
    return pipe


# The built-in families' options, as flags: type and help come from each option's owner
# (its family's options dataclass), which also checks the value and says which family takes it.
def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    from unimm.generation import family_names, get_family

    seen: dict[str, list[str]] = {}
    for name in family_names():
        for opt in get_family(name).options.names():
            seen.setdefault(opt, []).append(name)
    for opt, families in seen.items():
        specs = {f: get_family(f).options.spec(opt) for f in families}
        helps = {f: s["help"] + (f" ({' or '.join(s['choices'])})" if s.get("choices") else "") for f, s in specs.items()}
        if len(set(helps.values())) == 1:  # one meaning: say which families take it
            takes = "" if len(families) == len(family_names()) else f" [{', '.join(families)}]"
            text = next(iter(helps.values())) + takes
        else:
            text = "; ".join(f"{f}: {h}" for f, h in helps.items())
        parser.add_argument(f"--{opt.replace('_', '-')}", type=specs[families[0]]["type"], default=None, dest=opt,
                            help=text)
    parser.add_argument("--best-of", type=int, default=None, dest="best_of", metavar="N",
                        help="draw each image N times and keep the one the model itself describes best "
                             "(default: the model's config.sampling.best_of; 1: off)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                        help="any other sampling option of the model's generation family (repeatable)")


def set_options(pairs: list[str], options) -> dict:
    """--set NAME=VALUE pairs as the family's options, each converted to its option's type."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {pair!r}")
        if name not in options.names():
            raise ValueError(f"--set {name}: not a sampling option of this model; its options: "
                             f"{', '.join(options.names())}")
        kind = options.spec(name)["type"]
        try:
            out[name] = kind(value) if kind is str else kind(float(value)) if kind is float else int(value)
        except ValueError:
            raise ValueError(f"--set {name}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    return out


def sampling_kwargs(args: argparse.Namespace, pipe) -> dict:
    """The sampling options given on the command line (flags and --set), for `pipe.generate`."""
    from unimm.generation import family_names, get_family

    flags = {o: getattr(args, o, None) for f in family_names() for o in get_family(f).options.names()}
    given = {**flags, **set_options(args.options, pipe.model.family.options), "best_of": getattr(args, "best_of", None)}
    return {k: v for k, v in given.items() if v is not None}


def cmd_generate(args) -> int:
    from unimm.console import check_image_format, check_output_file
    from unimm.images import upscale
    from unimm.pipelines.unified import check_output_fits

    if args.upscale < 1:
        raise ValueError(f"--upscale must be >= 1, got {args.upscale}")
    out = check_output_file(args.output, "-o")  # before the model runs, not after
    check_image_format(out, "-o")
    control = {}
    if args.control:
        control = {"control_image": args.control, "control_type": args.control_type or None,
                   "control_scale": args.control_scale or None, "control_is_map": args.control_is_map}
    elif args.control_type or args.control_scale or args.control_is_map:
        raise ValueError("--control-type, --control-scale and --control-is-map need --control IMAGE")
    if args.reference_scale is not None and args.reference is None:
        raise ValueError("--reference-scale needs --reference IMAGE")
    if args.reference is not None:
        control.update(reference_image=args.reference, reference_scale=args.reference_scale)
    pipe = load_model(args)
    if args.upscale > 1:  # the upscaled copies must fit as well
        check_output_fits(max(1, args.num_images) * args.upscale ** 2, pipe.image_size)
    images = pipe.generate(args.prompt, num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
                           progress=not args.quiet, compile=args.compile, **control, **sampling_kwargs(args, pipe))
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    temps: list[Path] = []
    try:  # every image to a temporary file first; files already there are replaced only once all are written
        for im, path in zip(images, paths):
            im = upscale(im, args.upscale)  # nearest neighbour: every model pixel becomes a crisp N x N block
            temps.append(_write_temp(im, path))
    except BaseException:
        for tmp in temps:  # a run that stops half way (e.g. a full disk) leaves nothing of its own behind
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in zip(temps, paths):
        os.replace(tmp, path)
        print(path)
    print(f"seed: {images[0].info['seed']}", file=sys.stderr)
    return 0


def _write_temp(image, path: Path) -> Path:
    """`image` written whole to a temporary file beside `path` (removed again if writing fails)."""
    from PIL import Image

    from unimm.folders import write_beside

    fmt = Image.registered_extensions()[path.suffix.lower()]
    return write_beside(path, lambda f: image.save(f, format=fmt))


def cmd_chat(args) -> int:
    from unimm.images import load_frames

    video = load_frames(args.video, args.frames) if args.video else None
    pipe = load_model(args)
    pieces = pipe.chat(list(args.image) or None, args.question, stream=True, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, video=video)
    for piece in pieces:
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_train_tokenizer(args) -> int:
    from unimm.training.tokenizer import load_train_config, train_tokenizer

    cfg = load_train_config(args.config, args.overrides)
    metrics = train_tokenizer(cfg, progress=not args.quiet, overwrite=args.overwrite)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "step")
    print(f"saved {Path(cfg.output_dir) / 'tokenizer'}  ({shown})")
    return 0


def cmd_train_siglip(args) -> int:
    from unimm.training.siglip import load_siglip_config, train_siglip

    cfg = load_siglip_config(args.config, args.overrides)
    metrics = train_siglip(cfg, progress=not args.quiet, overwrite=args.overwrite)
    print(f"saved {Path(cfg.output_dir) / 'model'}  (held-out retrieval accuracy {metrics.get('retrieval_acc', float('nan')):.3f})")
    return 0


def cmd_convert(args) -> int:
    from unimm.interop import convert_janus

    print(convert_janus(args.src, args.dst, overwrite=args.overwrite))
    return 0


def cmd_export(args) -> int:
    from unimm.interop import export_janus

    print(export_janus(args.src, args.dst, overwrite=args.overwrite))
    return 0


def _demo(args) -> int:
    try:
        from unimm.app import main as demo_main
    except ImportError as e:
        print(f"unimm demo: error: {e}", file=sys.stderr)
        return 2
    return demo_main(args.args)


def build_parser() -> argparse.ArgumentParser:
    from unimm.console import Parser

    parser = Parser(prog="unimm", description="Unified multimodal models: chat about images and generate them.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="text-to-image")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.png", help="output file; with several images, NAME-0.png, NAME-1.png, ...")
    g.add_argument("-n", "--num-images", type=int, default=1)
    add_sampling_flags(g)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None, help="rows decoded together (bounds memory)")
    g.add_argument("--upscale", type=int, default=1,
                   help="write each image N times larger, nearest neighbour (crisp pixels); default: the model's size")
    g.add_argument("--control", action="append", default=[], metavar="IMAGE",
                   help="a picture whose control map steers a dit model's ControlNet (repeat for several)")
    g.add_argument("--control-type", action="append", default=[], choices=["edges", "segmentation"],
                   help="the map each --control makes (default: the model's only ControlNet)")
    g.add_argument("--control-scale", action="append", default=[], type=float, metavar="S",
                   help="weight of each control (default 1)")
    g.add_argument("--control-is-map", action="store_true", help="the --control images are maps already")
    g.add_argument("--reference", metavar="IMAGE", default=None,
                   help="a picture whose object a dit model's IP-Adapter draws (the prompt may then be \"\")")
    g.add_argument("--reference-scale", type=float, default=None, metavar="S",
                   help="weight of the reference (default: the adapter's)")
    g.add_argument("--compile", action="store_true",
                   help="run the decode step (autoregressive) or the generator pass (dit) through torch.compile; "
                        "the first call compiles")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="ask about one or more images")
    c.add_argument("question")
    c.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    c.add_argument("--video", default=None,
                   help="a short clip (an animated GIF, APNG or WebP): its frames follow the images")
    c.add_argument("--frames", type=int, default=8, help="--video: at most this many frames, sampled evenly")
    c.add_argument("--max-new-tokens", type=int, default=None)
    c.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    c.add_argument("--top-k", type=int, default=None)
    c.add_argument("--top-p", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    model_args(c)
    c.set_defaults(func=cmd_chat)

    cv = sub.add_parser("convert", help="open another format's checkpoint as a unimm model")
    cv.add_argument("format", choices=["janus"], help="janus: transformers' Janus / Janus-Pro format")
    cv.add_argument("src", help="the checkpoint directory (config.json, safetensors, tokenizer and processor files)")
    cv.add_argument("dst", help="the unimm model directory to write")
    cv.add_argument("--overwrite", action="store_true",
                    help="write into a folder that holds other files, replacing only the model's own files there")
    cv.set_defaults(func=cmd_convert)

    ex = sub.add_parser("export", help="write a unimm model in another format")
    ex.add_argument("format", choices=["janus"], help="janus: transformers' Janus format (JanusForConditionalGeneration)")
    ex.add_argument("src", help="a unimm model directory")
    ex.add_argument("dst", help="the checkpoint directory to write")
    ex.add_argument("--overwrite", action="store_true",
                    help="write into a folder that holds other files, replacing only the model's own files there")
    ex.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="shapes-world benchmark: generation (GenEval-style) and VQA", add_help=False)
    ev.add_argument("args", nargs=argparse.REMAINDER)
    ev.set_defaults(func=lambda a: __import__("unimm.eval.cli", fromlist=["main"]).main(a.args))

    de = sub.add_parser("demo", help="the Gradio app (chat + image generation)", add_help=False)
    de.add_argument("args", nargs=argparse.REMAINDER)
    de.set_defaults(func=_demo)

    tr = sub.add_parser("train", help="train a unified model (one stage)", add_help=False)
    tr.add_argument("args", nargs=argparse.REMAINDER)
    tr.set_defaults(func=lambda a: __import__("unimm.train", fromlist=["main"]).main(a.args))

    t = sub.add_parser("train-tokenizer", help="train a VQ or VAE image tokenizer")
    t.add_argument("config", help="a training config, e.g. configs/tokenizers/vq-shapes.yaml")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. steps=500 data.num_samples=2048")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.add_argument("--overwrite", action="store_true",
                    help="write into a folder that holds other files, replacing only the model's own files there")
    t.set_defaults(func=cmd_train_tokenizer)

    sg = sub.add_parser("train-siglip", help="pretrain a small SigLIP encoder (sigmoid contrastive loss)")
    sg.add_argument("config", help="e.g. configs/recipes/siglip-shapes.yaml")
    sg.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    sg.add_argument("-q", "--quiet", action="store_true")
    sg.add_argument("--overwrite", action="store_true",
                    help="write into a folder that holds other files, replacing only the model's own files there")
    sg.set_defaults(func=cmd_train_siglip)
    return parser


def _delegated(command: str):
    """Commands whose whole argument list belongs to another module's own parser."""
    if command == "eval":
        from unimm.eval.cli import main as run
    elif command == "train":
        from unimm.train import main as run
    elif command == "demo":
        return lambda argv: _demo(argparse.Namespace(args=argv))
    else:
        return None
    return run


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    return f"unimm: warning: {message}\n"  # for people at a terminal, not a source location


def main(argv: list[str] | None = None) -> int:
    import warnings

    shown, warnings.formatwarning = warnings.formatwarning, _plain_warning
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    finally:
        warnings.formatwarning = shown


def _main(argv: list[str]) -> int:
    from unimm.console import guarded

    # argparse's REMAINDER drops a leading "--option", so these go straight to their parsers.
    run = _delegated(argv[0]) if argv else None
    if run is not None:
        return run(argv[1:])
    args = build_parser().parse_args(argv)
    # Bad input, an unwritable path, a full disk or a damaged file: one line, no traceback.
    return guarded(f"unimm {args.command}", args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())

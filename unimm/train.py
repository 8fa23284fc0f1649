"""`python -m unimm.train CONFIG [key=value ...] [--resume]`, also under `accelerate launch -m unimm.train`."""
from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from .console import Parser

    p = Parser(prog="unimm train", description="Train a unified model (one stage) with accelerate.")
    p.add_argument("config", help="a stage config, e.g. configs/train/tiny-stage1.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. steps=200 optim.lr=3e-4")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that holds a run's checkpoints, and write final/ into a "
                        "folder holding other files (replacing only the model's own files)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from .console import guarded

    return guarded("unimm train", _main, argv)


def _main(argv: list[str] | None) -> int:
    from .training.config import load_train_config
    from .training.trainer import train

    args = build_parser().parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    train(cfg, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under torchrun / accelerate launch: every process waits for the others, then closes the
    group, rather than tearing its sockets down at interpreter exit while a peer still uses them
    (a gloo rank can abort there)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())

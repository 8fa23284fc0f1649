"""A training run's output folder: claimed at the start, so one run never writes over another's.

Every trainer (`unimm train`, `train-tokenizer`, `train-siglip`) writes its
`train_config.json` when it starts. A folder already holding another run's
config (a different one), or a `metrics.jsonl` of a run whose config is unknown,
is refused before any work unless the caller passes `overwrite` (or resumes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..folders import DestinationError

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"


def claim_output_dir(out_dir: Path, config: dict, resume: bool = False, overwrite: bool = False,
                     record: bool = True) -> None:
    """Refuse an output folder that belongs to another run, then (`record`) write this run's config there.

    A trainer checks before its set-up and records once the set-up has worked (and, on
    resume, a checkpoint was found), so a failed start leaves the folder as it was.
    """
    out_dir = Path(out_dir)
    config = json.loads(json.dumps(config, default=str))  # as it reads back (tuples become lists)
    if out_dir.exists() and not out_dir.is_dir():
        raise DestinationError(f"output_dir {out_dir} is a file, not a folder")
    previous = out_dir / CONFIG_FILE
    if not (resume or overwrite):
        if previous.is_file():
            try:
                old = json.loads(previous.read_text())
            except (ValueError, UnicodeDecodeError):
                old = None
            # output_dir is left out: a run folder that was moved or copied is still that run.
            keys = sorted(k for k in set(old or {}) | set(config)
                          if k != "output_dir" and (old or {}).get(k) != config.get(k))
            if keys or old is None:
                differ = f" (it differs in {', '.join(keys)})" if old is not None else " (unreadable)"
                raise DestinationError(
                    f"{out_dir} holds another run: its {CONFIG_FILE}{differ}; choose another output_dir, "
                    "or pass --overwrite to replace that run's files"
                )
        elif (out_dir / METRICS_FILE).is_file():
            raise DestinationError(f"{out_dir} holds another run's {METRICS_FILE}; choose another output_dir, "
                                   "or pass --overwrite to replace that run's files")
    if not record:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, previous)

"""Training checkpoints: written atomically and verified, read back without running code.

A checkpoint is `OUTPUT/checkpoints/step-NNNNNNN/` holding
- accelerate's state: the model's weights (safetensors), `optimizer.bin`, `scheduler.bin`
  and `random_states_<process>.pkl`; accelerate reads these torch files with
  `torch.load(weights_only=True)`, which rebuilds tensors and plain containers and
  refuses any other object, so a crafted file cannot run code;
- `ema.safetensors`: the trainer's EMA of the trainable weights (when `ema_decay` is set);
- `trainer_state.json`: the step (the data position follows from it);
- `.unimm-manifest.json`: size and SHA-256 of every file above.

It is written under a temporary name, checked and renamed when complete, so a crash
or a full disk mid-write leaves the earlier checkpoints as they were. On resume the
newest checkpoint whose files match their manifest and load cleanly is used; each
damaged one is reported by name with the file at fault.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from ..folders import (DamagedError, apply_umask, exchange_paths, manifest_problems, read_manifest, write_errors,
                       write_failure, write_manifest)

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no intact one could be read (the message says which and why)."""


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list[Path]:
    """Checkpoint folders (renamed into place, so once complete), oldest first; intact or not."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# -- writing ------------------------------------------------------------------------------
def save_checkpoint(accelerator, output_dir, step: int, keep_last: int, ema=None, extra: dict | None = None) -> Path:
    """Write step `step`'s checkpoint and keep the newest `keep_last`; CheckpointError if it cannot be written."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"  # one name every process agrees on
    main = accelerator.is_main_process
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt at this step
            root.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every process writes its part (its RNG state, shards)
        accelerator.wait_for_everyone()
        if main:
            if ema is not None:
                ema.save(tmp / EMA_FILE)
            (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}))
            write_manifest(tmp, "checkpoint")
            apply_umask(tmp)  # safetensors writes 0600 files
            problems = _written_problems(tmp)
            if problems:
                raise CheckpointError(f"checkpoint {final} failed its check after writing: {'; '.join(problems)}")
            _swap_in(tmp, final)
            for old in list_checkpoints(output_dir)[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    except CheckpointError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    except write_errors() as e:  # a full disk surfaces as OSError, torch's RuntimeError or SafetensorError
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {write_failure(e)}; "
                              "the earlier checkpoints are intact") from e
    accelerator.wait_for_everyone()
    return final


def _written_problems(ckpt: Path) -> list[str]:
    """Right after writing: every file is as listed, safetensors headers parse, JSON parses."""
    from safetensors import safe_open

    problems = manifest_problems(ckpt, hashes=False)
    for path in sorted(ckpt.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    f.keys()
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:  # noqa: BLE001 - any parse failure is a damaged file
            problems.append(f"{path.name} does not parse ({e})")
    return problems


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists() and not final.is_dir():
        raise CheckpointError(f"cannot write checkpoint {final}: a file of that name is there, not a checkpoint")
    if not final.exists():
        os.replace(tmp, final)
        return
    # The same step again (a resumed run passing a damaged or older copy): swap, then drop the old copy.
    if not exchange_paths(tmp, final):
        aside = final.with_name(f".old-{final.name}")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        tmp = aside
    shutil.rmtree(tmp)


def remove_checkpoints(output_dir) -> None:
    """Start over: drop a previous run's checkpoints (only `step-N` folders this trainer names)."""
    for ckpt in list_checkpoints(output_dir):
        shutil.rmtree(ckpt)


# -- reading ------------------------------------------------------------------------------
def read_state(checkpoint: Path) -> dict:
    """trainer_state.json; DamagedError naming it when it is not a state this trainer wrote."""
    path = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
            raise ValueError("no step in it")
    except FileNotFoundError:
        raise DamagedError(f"{STATE_FILE} is missing") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedError(f"{STATE_FILE} is damaged ({str(e).splitlines()[0]})") from None
    return state


def checkpoint_problem(ckpt: Path, needs_ema: bool) -> str | None:
    """Why this checkpoint cannot be resumed from (naming the file), or None if it is intact."""
    try:
        manifest = read_manifest(ckpt)
    except DamagedError as e:
        return str(e)
    if manifest is None:
        return "its manifest (.unimm-manifest.json) is missing, so its files cannot be checked"
    problems = manifest_problems(ckpt, hashes=True)
    if problems:
        return "; ".join(problems)
    files = manifest["files"]
    # Weights and optimizer state take other names and layouts under FSDP (folders of .distcp
    # shards) or DeepSpeed; whatever the layout, a checkpoint is more than its state file.
    lacking = [name for name, present in (
        (STATE_FILE, STATE_FILE in files),
        ("model weights", any(f.startswith(("model", "pytorch_model")) for f in files)),
        ("optimizer state", any(f.startswith(("optimizer", "pytorch_model")) for f in files))) if not present]
    if lacking:
        return f"its manifest does not list {', '.join(lacking)}"
    if needs_ema and EMA_FILE not in manifest["files"]:
        return f"{EMA_FILE} is missing (this run keeps an EMA)"
    try:
        step = read_state(ckpt)["step"]
    except DamagedError as e:
        return str(e)
    if step != int(_NAME.match(ckpt.name).group(1)):
        return f"{STATE_FILE} says step {step}, not the step in its name"
    return None


def restore_checkpoint(accelerator, output_dir, ema=None) -> tuple[Path, dict]:
    """Load the newest intact checkpoint into the prepared objects (and `ema`); returns it and its state.

    Damaged checkpoints are reported on stderr and skipped; CheckpointError if none is intact.
    """
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint under {checkpoint_dir(output_dir)}")
    skipped = []
    for ckpt in reversed(found):
        problem = checkpoint_problem(ckpt, needs_ema=ema is not None)
        if problem is None:
            try:
                accelerator.load_state(str(ckpt))
                if ema is not None:
                    ema.load(ckpt / EMA_FILE)
                return ckpt, read_state(ckpt)
            except (torch.OutOfMemoryError, MemoryError):
                raise  # the machine's trouble, not the checkpoint's
            except Exception as e:  # noqa: BLE001 - whatever a file holds, name it and fall back
                problem = (f"it does not load into this run (damaged, or written by another configuration): "
                           f"{write_failure(e)}")
        skipped.append(f"{ckpt.name}: {problem}")
        if accelerator.is_main_process:
            print(f"unimm train: checkpoint {ckpt} cannot be used: {problem}; trying the one before", file=sys.stderr)
    raise CheckpointError(f"--resume: no intact checkpoint under {checkpoint_dir(output_dir)} ("
                          + "; ".join(skipped) + ")")

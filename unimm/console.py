"""What every `unimm` command does with bad input: one line on stderr and exit status 2.

- `Parser`: argparse with a one-line usage error (`unimm generate: error: ...
  (see unimm generate -h)`) instead of the usage block.
- `guarded(command, fn)`: runs a command; an error the user can fix (bad
  values, files that cannot be read or written, a full disk, a damaged save)
  is printed as one line naming it, without a traceback. Anything else is a
  bug and keeps its traceback.
- `check_output_file(path, what)`: refuses an output path that cannot be
  written before any work is spent on what goes there.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line that names the problem and where help is."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def one_line(error: BaseException) -> str:
    """The error as one line: OS errors as 'what went wrong: path', others with newlines folded."""
    if isinstance(error, OSError) and error.strerror:
        where = ": ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        text = error.strerror if error.errno != errno.ENOSPC else "the disk is full"
        return f"{text}: {where}" if where else text
    return " ".join(str(error).split()) or type(error).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a refused file operation, not a bug in unimm."""
    from .folders import SaveError
    from .training.checkpoints import CheckpointError

    return ValueError, OSError, SaveError, CheckpointError, FloatingPointError, ImportError


def guarded(command: str, fn, *args) -> int:
    """fn(*args) as a command's exit status; a user error is one line on stderr and 2."""
    try:
        return fn(*args)
    except SystemExit as e:  # argparse's usage error (already printed) or --help, as a status
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except user_errors() as e:
        print(f"{command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def check_image_format(path: Path, what: str) -> None:
    """A ValueError unless PIL can write `path`'s extension (not every format it reads)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"{what} {path}: {path.suffix or 'no extension'} is not an image format unimm can write; "
                         "use .png, .jpg, .webp, ...")


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """`path` as a Path if a file can be written there, else a ValueError naming the problem.

    Checked: not a directory, no file where one of its folders should be, and a file
    can be created in the nearest existing folder (missing folders are made when writing).
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise ValueError(f"{what} {str(path)!r} is not a file name")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file name inside it")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, not a folder")
    try:  # the real test: create (and remove) a file of our own there
        with tempfile.TemporaryFile(dir=parent, prefix=".unimm-write-test-"):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot write in {parent} ({e.strerror or e})") from None
    return path

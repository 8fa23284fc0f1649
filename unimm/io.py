"""Weights on disk: safetensors only, written atomically, loaded with checks.

Loading never unpickles: weights are read with safetensors, configs are JSON.

Writing never removes what it did not write. A save builds the whole model in
a temporary folder beside its destination, then swaps it in:
- a destination that does not exist, is empty, or holds only an earlier save's
  own files (listed in its manifest, `.unimm-manifest.json`) is replaced whole,
  by an atomic exchange of the two folders where the OS has one (Linux);
- a destination holding anything else is refused, naming those files, unless
  the caller passes `overwrite=True`; then only the model's own files are
  replaced (each atomically) and everything else stays;
- a destination that is a regular file, or the folder being converted, is refused.
The swap happens under an exclusive lock on the parent folder, and `reading()`
takes the shared lock, so a reader in unimm sees the old model or the new one,
never a missing or half-swapped one, and two writers never interleave.
Every saved folder carries a manifest of its files with sizes and SHA-256
hashes: it says which files are the model's own, and lets a reader check that
none is truncated or changed.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ConfigError

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


MANIFEST_NAME = ".unimm-manifest.json"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


class DestinationError(ValueError):
    """A save was refused because of where it would write (named in the message)."""


class DamagedError(ValueError):
    """Files of a saved folder do not match its manifest (the files are named)."""


# -- manifests ------------------------------------------------------------------------
def _files_under(root: Path) -> list[str]:
    """Relative POSIX paths of every file under `root`, sorted."""
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.append((Path(dirpath) / n).relative_to(root).as_posix())
    return sorted(out)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, kind: str) -> dict:
    """List every file in `directory` with its size and SHA-256 in its manifest; returns the manifest."""
    directory = Path(directory)
    files = {
        rel: {"size": (directory / rel).stat().st_size, "sha256": file_sha256(directory / rel)}
        for rel in _files_under(directory) if rel != MANIFEST_NAME
    }
    manifest = {"format": "unimm-manifest", "version": 1, "kind": kind, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The folder's manifest, None if it has none; DamagedError if it is unreadable."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != "unimm-manifest" or not isinstance(files, dict) or not all(
                isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                for v in files.values()):
            raise ValueError("not a unimm manifest")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedError(f"{MANIFEST_NAME} in {directory} is damaged ({e})") from None
    return data


def manifest_problems(directory: str | os.PathLike, hashes: bool = True) -> list[str]:
    """What does not match the manifest: a line per missing, truncated or changed file (empty: intact).

    `hashes=False` checks presence and sizes only (cheap, catches truncation).
    """
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except DamagedError as e:
        return [str(e)]
    if manifest is None:
        return [f"{MANIFEST_NAME} is missing"]
    problems = []
    for rel, meta in manifest["files"].items():
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
            continue
        size = path.stat().st_size
        if size != meta["size"]:
            problems.append(f"{rel} is {'truncated' if size < meta['size'] else 'damaged'} "
                            f"({size:,} bytes, {meta['size']:,} written)")
        elif hashes and file_sha256(path) != meta["sha256"]:
            problems.append(f"{rel} is damaged (its contents changed since it was written)")
    return problems


# -- what a destination holds ---------------------------------------------------------------
def _foreign_entries(target: Path) -> list[str]:
    """Top-level entries of `target` that its manifest does not list as the saved model's own."""
    try:
        manifest = read_manifest(target)
    except DamagedError:
        manifest = None
    own = set(manifest["files"]) if manifest else set()
    foreign = []
    for entry in sorted(target.iterdir(), key=lambda p: p.name):
        if entry.name == MANIFEST_NAME and manifest is not None:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not own or any(rel not in own for rel in _files_under_lazy(entry, target)):
                foreign.append(entry.name + "/")
        elif entry.name not in own:
            foreign.append(entry.name)
    return foreign


def _files_under_lazy(folder: Path, root: Path):
    for dirpath, _, names in os.walk(folder):
        if not names and dirpath != str(folder):
            yield Path(dirpath).relative_to(root).as_posix() + "/"  # an empty folder is nobody's file
        for n in names:
            yield (Path(dirpath) / n).relative_to(root).as_posix()


def check_destination(target: str | os.PathLike, overwrite: bool = False, sources=()) -> Path:
    """Refuse a destination a save must not write to; returns the path the save will use.

    Refused: a regular file; one of `sources` (the folder a conversion reads); a folder holding
    files that are not an earlier save's own, unless `overwrite` (then only own files are replaced).
    """
    target = Path(os.path.abspath(Path(target).expanduser()))  # "." and ".." have no name to write beside
    if target.is_symlink():
        if not target.is_dir():
            raise DestinationError(f"cannot save to {target}: it is a link to {os.readlink(target)}, not a folder")
        target = target.resolve()  # write into the folder the link names, keep the link
    if target.exists() and not target.is_dir():
        raise DestinationError(f"cannot save to {target}: it is a file, not a folder")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DestinationError(f"cannot save to {target}: {parent} is a file, not a folder")
            break
    for src in sources:
        src = Path(src).expanduser()
        if src.exists() and target.exists() and os.path.samefile(src, target):
            raise DestinationError(f"cannot write to {target}: it is the source folder; "
                                   "choose another destination, so the source stays as it is")
    if target.is_dir() and not overwrite:
        foreign = _foreign_entries(target)
        if foreign:
            raise DestinationError(
                f"{target} already holds files this save did not write: {_preview(foreign)}; save to a new or "
                "empty folder, or pass overwrite=True (--overwrite) to replace only the model's own files"
            )
    return target


# -- the swap -------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool):
    """flock on a folder (POSIX): exclusive for a writer's swap, shared for a reader's load."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock (Windows), or an unreadable folder: no lock
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


_held = threading.local()


@contextlib.contextmanager
def reading(directory: str | os.PathLike):
    """Hold while reading a saved folder: a save's swap waits, so the files read belong to one save.

    Re-entrant within a thread (a pipeline's load reads the model, then its tokenizer).
    """
    parent = str(Path(directory).expanduser().absolute().parent)
    held = _held.__dict__.setdefault("parents", set())
    if parent in held:
        yield
        return
    with _locked(Path(parent), exclusive=False):
        held.add(parent)
        try:
            yield
        finally:
            held.discard(parent)


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _umask() -> int:
    try:  # read without changing it (os.umask would race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give a finished folder the modes a plain mkdir / open would (mkdtemp makes it 0700)."""
    mask = _umask()
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for n in names:
            os.chmod(Path(dirpath) / n, 0o666 & ~mask)


def _sweep_stale(target: Path) -> None:
    """Remove temporary folders of `target` left by saves whose process is gone (killed mid-save)."""
    for p in target.parent.glob(f".{glob.escape(target.name)}.*-*-*"):
        m = _TMP.match(p.name)
        if not m or m["name"] != target.name or int(m["pid"]) == os.getpid():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _temp_beside(target: Path, what: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{what}-{os.getpid()}-", dir=target.parent))


def _holds_cwd(target: Path) -> bool:
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == target.resolve() or target.resolve() in cwd.parents


def _merge_into(tmp: Path, target: Path) -> None:
    """Replace the model's own files in `target` one by one, keeping everything else there."""
    try:
        old = read_manifest(target)
    except DamagedError:
        old = None
    new = _files_under(tmp)
    for rel in new:
        if rel == MANIFEST_NAME:
            continue
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise DestinationError(f"cannot save to {target}: {rel} is a folder there, and the model writes a file")
        os.replace(tmp / rel, dest)
    for rel in sorted(set(old["files"]) - set(new) if old else ()):  # the earlier save's files this one lacks
        (target / rel).unlink(missing_ok=True)
        folder = (target / rel).parent
        while folder != target:  # and its folders, once empty
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    os.replace(tmp / MANIFEST_NAME, target / MANIFEST_NAME)
    shutil.rmtree(tmp)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False, sources=(), kind: str = "model"):
    """Yield a temporary folder; when the block succeeds its files become `target`'s.

    See the module docstring for what is refused and what is kept. `kind` is recorded in
    the manifest. On failure the temporary folder is removed and `target` is untouched.
    """
    target = check_destination(target, overwrite, sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target, "tmp")
    try:
        yield tmp
        write_manifest(tmp, kind)
        apply_umask(tmp)
        with _locked(target.parent, exclusive=True):
            _sweep_stale(target)
            # Checked again under the lock: another writer may have saved here meanwhile.
            target = check_destination(target, overwrite, sources)
            if not target.exists():
                os.rename(tmp, target)
            elif _foreign_entries(target) or _holds_cwd(target):
                _merge_into(tmp, target)  # a swapped-out folder would strand this process's working directory
            else:
                if not exchange_paths(tmp, target):  # readers wait on the lock through the two renames
                    old = _temp_beside(target, "old")
                    os.rename(target, old / "x")
                    os.rename(tmp, target)
                    tmp = old
                shutil.rmtree(tmp)  # the earlier save: its own files only (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights(module: torch.nn.Module, directory: str | os.PathLike, max_shard_size: str = "5GB",
                 dtype: torch.dtype | None = None) -> None:
    """Write `module`'s state dict as (possibly sharded) safetensors; tied tensors are stored once.

    `dtype` stores the floating-point tensors in that type (e.g. bfloat16 to halve a
    shipped checkpoint); integer buffers keep theirs.
    """
    from huggingface_hub import save_torch_state_dict

    state = module.state_dict()
    if dtype is not None:
        # Cast once per storage, so tensors that were tied stay tied (and stored once).
        cast: dict[int, torch.Tensor] = {}
        for k, v in state.items():
            if v.is_floating_point() and v.dtype != dtype:
                ptr = v.data_ptr()
                if ptr not in cast:
                    cast[ptr] = v.to(dtype)
                state[k] = cast[ptr]
    save_torch_state_dict(state, directory, max_shard_size=max_shard_size)


def _weight_files(directory: Path) -> list[Path]:
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = directory / WEIGHTS_INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"weights shard(s) missing in {directory}: {', '.join(missing)}")
        return [directory / s for s in shards]
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = f" (found {', '.join(pickled)}: pickled weights are not read; save with safetensors)" if pickled else ""
    raise FileNotFoundError(
        f"no weights file in {directory}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}{hint}"
    )


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint; never unpickles."""
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(directory)):
        state.update(load_file(str(f)))
    return state


def check_files(directory: str | os.PathLike) -> None:
    """Before loading a saved folder: each weights file its manifest lists has its written size.

    Sizes only (hashing gigabytes on every load would cost seconds), weights only (a
    config edited by hand is the user's right; a missing file gets the loader's own
    message). A folder without a manifest (written by hand or an older unimm) is not checked.
    """
    try:
        manifest = read_manifest(directory)
    except DamagedError:
        return  # the manifest is for checking, not needed for loading
    for rel, meta in (manifest or {"files": {}})["files"].items():
        path = Path(directory) / rel
        if rel.endswith(".safetensors") and path.is_file() and path.stat().st_size != meta["size"]:
            size = path.stat().st_size
            raise DamagedError(f"{rel} in {directory} is damaged: {size:,} bytes, {meta['size']:,} were written"
                               f"{' (truncated)' if size < meta['size'] else ''}")


def load_weights(module: torch.nn.Module, directory: str | os.PathLike) -> None:
    """Load safetensors weights into `module`, failing loudly on any mismatch.

    Keys absent from the files are allowed only when they alias a stored tensor
    (tied embeddings), since those were deduplicated when saving.
    """
    directory = Path(directory)
    check_files(directory)
    state = read_weights(directory)

    expected = module.state_dict(keep_vars=True)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ConfigError(
            f"checkpoint {directory} has weights the config does not build: {_preview(unexpected)}"
        )
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        raise ConfigError(
            f"checkpoint {directory} does not match its config; tensor shapes differ for "
            + _preview(bad_shapes)
        )
    # Tied parameters share storage; a key missing from the file is fine if a
    # stored key points at the same tensor.
    by_ptr: dict[int, list[str]] = {}
    for k, v in expected.items():
        by_ptr.setdefault(v.data_ptr(), []).append(k)
    missing = [
        k for k in expected
        if k not in state and not any(alias in state for alias in by_ptr[expected[k].data_ptr()])
    ]
    if missing:
        raise ConfigError(f"checkpoint {directory} lacks weights for: {_preview(sorted(missing))}")
    module.load_state_dict(state, strict=False)


def _preview(items: list[str], n: int = 8) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class SaveLoadMixin:
    """`save_pretrained` / `from_pretrained` for a component: config.json (+ its family `type`) + safetensors.

    Subclasses set `config_class` and `type_name` and take their config as the
    only constructor argument.
    """

    config_class: type
    type_name: str

    def save_pretrained(self, directory, overwrite: bool = False) -> None:
        """config.json + safetensors, swapped in atomically (see `atomic_directory` for `overwrite`)."""
        from .config import to_dict, write_json

        with atomic_directory(directory, overwrite=overwrite, kind=self.type_name) as tmp:
            write_json({"type": self.type_name, **to_dict(self.resolved_config())}, Path(tmp) / "config.json")
            save_weights(self, tmp)

    def resolved_config(self):
        return self.config

    @classmethod
    def read_config(cls, directory):
        from .config import from_dict

        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved {cls.__name__}: config.json is missing")
        data = json.loads(path.read_text())
        kind = data.pop("type", cls.type_name)
        if kind != cls.type_name:
            raise ConfigError(f"{directory} holds a {kind!r} component, not {cls.type_name!r}")
        return from_dict(cls.config_class, data, f"{cls.__name__} config in {directory}")

    @classmethod
    def from_pretrained(cls, directory):
        with reading(directory):
            module = cls(cls.read_config(directory))
            load_weights(module, directory)
        return module.eval()

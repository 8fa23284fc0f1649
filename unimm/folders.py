"""Saved folders: what a save may write over, how it swaps in, and how a reader checks it.

Writing never removes what it did not write. A save builds the whole folder
in a temporary folder beside its destination, then moves it in:
- a destination that does not exist, or holds only an earlier save's own files
  (listed in its manifest, `.unimm-manifest.json`), is replaced whole, by an
  atomic exchange of the two folders where the OS has one (Linux);
- a destination holding anything else is refused, naming those entries, unless
  the caller passes `overwrite=True`; then only the model's own files are
  replaced, one by one, and everything else stays (so too for an empty folder,
  a mount point, or the working directory, which must keep their identity);
- a destination that is a regular file, a source being converted, or inside
  one, is refused.
The move happens under an exclusive lock on the parent folder, and `reading()`
takes the shared lock, so a reader in unimm sees the old model or the new one,
never a missing or half-moved one, and two writers never interleave.

Every saved folder carries a manifest of its files with sizes and SHA-256
hashes: it says which files are the model's own, and lets a reader check that
none is truncated or changed. A file-by-file merge first records what it is
about to move (`.unimm-merge.json`), so a merge cut short by a crash is
recognised: loading the folder says so, and the next save finishes the job.
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
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

MANIFEST_NAME = ".unimm-manifest.json"
MERGE_NAME = ".unimm-merge.json"  # present only while (or if a crash cut short) a file-by-file merge
# Weight files are the model's own by name: a new save never leaves an older layout's weights
# (a single file beside new shards, or the reverse) for a loader to pick up.
_WEIGHT_FILE = re.compile(r"^model(?:-\d+-of-\d+)?\.safetensors$|^model\.safetensors\.index\.json$")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[A-Za-z0-9_]+$")


class DestinationError(ValueError):
    """A save was refused because of where it would write (named in the message)."""


class DamagedError(ValueError):
    """Files of a saved folder do not match its manifest (the files are named)."""


class SaveError(RuntimeError):
    """Writing a save failed (a full disk, a write error); the destination is as it was."""


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
        for rel in _files_under(directory) if rel not in (MANIFEST_NAME, MERGE_NAME)
    }
    manifest = {"format": "unimm-manifest", "version": 1, "kind": kind, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _inside(rel: str) -> bool:
    """A manifest path that names a file inside its folder (no absolute path, no '..')."""
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel and p.parts[0] != "."


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The folder's manifest, None if it has none; DamagedError if it is unreadable or names
    a file outside the folder."""
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
        outside = [rel for rel in files if not _inside(rel)]
        if outside:
            raise ValueError(f"it names files outside the folder: {preview(outside)}")
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


def check_weights_files(directory: str | os.PathLike) -> None:
    """Before loading a saved folder: no merge was cut short, and each weights file its manifest
    lists has its written size.

    Sizes only (hashing gigabytes on every load would cost seconds), weights only (a
    config edited by hand is the user's right; a missing file gets the loader's own
    message). A folder without a manifest (written by hand or an older unimm) is not checked.
    """
    if (Path(directory) / MERGE_NAME).is_file():
        raise DamagedError(f"{directory} is half written: a save into it was cut short ({MERGE_NAME} is "
                           "there); save the model there again")
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


# -- what a destination holds ---------------------------------------------------------------
def _own_files(target: Path) -> set[str]:
    """Files of `target` an earlier save wrote: its manifest's, plus those of a merge cut short."""
    own: set[str] = set()
    with contextlib.suppress(DamagedError):
        own |= set((read_manifest(target) or {"files": {}})["files"])
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pending = json.loads((target / MERGE_NAME).read_text())["files"]
        own |= {rel for rel in pending if isinstance(rel, str) and _inside(rel)}
    return own


def _entries_under(folder: Path, root: Path):
    """What a folder holds, as paths relative to `root`: files, plus a 'name/' marker for each
    empty folder and each link to a folder (neither can be an earlier save's own file)."""
    for dirpath, dirnames, names in os.walk(folder):
        here = Path(dirpath)
        if not names and not dirnames:
            yield here.relative_to(root).as_posix() + "/"
        for d in dirnames:
            if (here / d).is_symlink():
                yield (here / d).relative_to(root).as_posix() + "/"
        for n in names:
            yield (here / n).relative_to(root).as_posix()


def _foreign_entries(target: Path) -> list[str]:
    """Top-level entries of `target` that no earlier save of a model wrote."""
    own = _own_files(target)
    foreign = []
    for entry in sorted(target.iterdir(), key=lambda p: p.name):
        if entry.name in (MANIFEST_NAME, MERGE_NAME) and own:
            continue
        if entry.is_dir() and not entry.is_symlink():
            if any(rel not in own for rel in _entries_under(entry, target)):
                foreign.append(entry.name + "/")
        elif entry.name not in own:
            foreign.append(entry.name)
    return foreign


def check_destination(target: str | os.PathLike, overwrite: bool = False, sources=()) -> Path:
    """Refuse a destination a save must not write to; returns the path the save will use.

    Refused: an empty path; a regular file; one of `sources` (the folders a conversion reads)
    or a folder inside one; a folder holding files that are not an earlier save's own,
    unless `overwrite` (then only the model's own files are replaced).
    """
    if not str(target).strip():
        raise DestinationError("cannot save to an empty path; name a folder")
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
    real = Path(os.path.realpath(target))
    for src in sources:
        src = Path(os.path.realpath(Path(src).expanduser()))
        if real == src or src in real.parents:
            where = "it is the source folder" if real == src else f"it is inside the source folder {src}"
            raise DestinationError(f"cannot write to {target}: {where}; choose another destination, "
                                   "so the source stays as it is")
    if target.is_dir() and not overwrite:
        foreign = _foreign_entries(target)
        if foreign:
            raise DestinationError(
                f"{target} already holds files this save did not write: {preview(foreign)}; save to a new or "
                "empty folder, or pass overwrite=True (--overwrite) to replace only the model's own files"
            )
    return target


# -- locks ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool):
    """flock on a folder (POSIX): exclusive for a writer's move, shared for a reader's load.

    Where there is no flock (Windows) or it fails (some network file systems), no lock:
    saves stay atomic for writers, only the reader guarantee is lost.
    """
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


_held = threading.local()


@contextlib.contextmanager
def reading(directory: str | os.PathLike):
    """Hold while reading a saved folder: a save's move waits, so the files read belong to one save.

    Re-entrant within a thread (a pipeline's load reads the model, then its tokenizer). Links
    are followed first, so reader and writer lock the same parent.
    """
    parent = str(Path(os.path.realpath(Path(directory).expanduser())).parent)
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


# -- moving a finished folder in ------------------------------------------------------------
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


def umask() -> int:
    """The process's umask, read without changing it where /proc allows."""
    try:  # read without changing it (os.umask would race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_beside(path: Path, write, mode: int | None = None) -> Path:
    """A temporary file in `path`'s folder, filled by `write(file)` and given `mode` (default:
    what a plain open() gives under the umask; mkstemp makes 0600). Removed again if writing
    fails; the caller moves it into place (os.replace) when it is ready."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def apply_umask(root: Path) -> None:
    """Give a finished folder the modes a plain mkdir / open would (mkdtemp makes it 0700)."""
    mask = umask()
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for n in names:
            os.chmod(Path(dirpath) / n, 0o666 & ~mask)


def _sweep_stale(target: Path) -> None:
    """Remove temporary folders of `target` left by saves on this host whose process is gone."""
    for p in target.parent.glob(f".{glob.escape(target.name)}.*-*-*-*"):
        m = _TMP.match(p.name)
        if not m or m["name"] != target.name or m["host"] != _HOST or int(m["pid"]) == os.getpid():
            continue
        try:  # untouched for a minute too: a PID from another PID namespace may look dead
            if time.time() - p.stat().st_mtime < 60:
                continue
        except OSError:
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _temp_beside(target: Path, what: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{what}-{_HOST}-{os.getpid()}-", dir=target.parent))


def _keeps_identity(target: Path) -> bool:
    """Folders that must not be swapped for another: an empty one (the user made it), a mount
    point, and this process's working directory or a folder above it."""
    if not any(target.iterdir()) or os.path.ismount(target):
        return True
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        return False
    return cwd == target.resolve() or target.resolve() in cwd.parents


def _merge_into(tmp: Path, target: Path) -> None:
    """Replace the model's own files in `target` one by one, keeping everything else there."""
    new = [rel for rel in _files_under(tmp) if rel != MANIFEST_NAME]
    clash = [rel for rel in new if (target / rel).is_dir() or any(
        (target / p).exists() and not (target / p).is_dir() for p in PurePosixPath(rel).parents if str(p) != ".")]
    if clash:
        raise DestinationError(f"cannot save to {target}: {preview(clash)} would replace a folder there "
                               "(or a file stands where the model needs a folder)")
    old = _own_files(target)
    stale = sorted((old | {p.name for p in target.iterdir() if _WEIGHT_FILE.match(p.name)}) - set(new))
    # Recorded first: if this is cut short, the next save knows these files are its own.
    (target / MERGE_NAME).write_text(json.dumps({"files": sorted(set(new) | set(stale))}))
    for rel in new:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, target / rel)
    for rel in stale:  # the earlier save's files this one does not have
        path = target / rel
        if path.is_symlink() or not path.is_file():
            continue
        path.unlink()
        folder = path.parent
        while folder != target:  # and its folders, once empty
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    os.replace(tmp / MANIFEST_NAME, target / MANIFEST_NAME)
    (target / MERGE_NAME).unlink()
    shutil.rmtree(tmp)


def _replace_whole(tmp: Path, target: Path) -> None:
    """Swap a finished folder for `target`, which holds only an earlier save's files."""
    os.chmod(tmp, target.stat().st_mode & 0o7777)  # the folder keeps the mode it had
    if not exchange_paths(tmp, target):  # readers wait on the lock through the two renames
        old = _temp_beside(target, "old")
        os.rename(target, old / "x")
        os.rename(tmp, target)
        tmp = old
    shutil.rmtree(tmp)  # the earlier save: its own files only (checked by the caller)


def write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError, torch's RuntimeError, safetensors' own error (a full disk
    reaches us as any of them)."""
    from safetensors import SafetensorError

    return OSError, RuntimeError, SafetensorError


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False, sources=(), kind: str = "model"):
    """Yield a temporary folder; when the block succeeds its files become `target`'s.

    See the module docstring for what is refused and what is kept. `kind` is recorded in
    the manifest. On failure the temporary folder is removed and `target` is untouched; a
    write failure (e.g. a full disk) is raised as SaveError saying so.
    """
    target = check_destination(target, overwrite, sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(target, "tmp")
    try:
        try:
            yield tmp
            write_manifest(tmp, kind)
            apply_umask(tmp)
        except write_errors() as e:
            if isinstance(e, (SaveError, DestinationError)):
                raise
            raise SaveError(f"could not save to {target}: {write_failure(e)}; {target} is as it was") from e
        with _locked(target.parent, exclusive=True):
            _sweep_stale(target)
            # Checked again under the lock: another writer may have saved here meanwhile.
            target = check_destination(target, overwrite, sources)
            if not target.exists():
                os.rename(tmp, target)
            elif _foreign_entries(target) or (target / MERGE_NAME).exists() or _keeps_identity(target):
                _merge_into(tmp, target)
            else:
                _replace_whole(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_failure(e: BaseException) -> str:
    """A one-line reason for a failed write (e.g. "No space left on device (PATH)")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({e.filename})" if e.filename else "")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def preview(items: list[str], n: int = 8) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more

"""Readers for the training-data formats users already have, as map-style sources.

A *source* is what the trainer samples from by index:

    len(source)            number of items (stable: index i is always the same item)
    source.get(i)          a record dict, or None when item i is unusable
    source.skipped         collections.Counter: reason -> number of unusable items met so far
    source.task            "understanding" | "text" | "generation" | "preference"
    source.name            short description for logs

Records are plain dicts:

    understanding  {"task": "understanding", "images": [PIL RGB, ...], "turns": [(question, answer), ...]}
    text           {"task": "text", "text": str}
    generation     {"task": "generation", "image": PIL RGB, "caption": str}
                   (optionally "swapped_caption": the same words bound to other objects, e.g. "a
                   red star and a blue circle" for "a red circle and a blue star": a caption the
                   image does not match, for the trainer's `prompt_contrast`)
    understanding  (optionally, with one turn, "swapped_question": its words bound to another object
                   of the image, e.g. "What colour is the star?" for "What colour is the circle?",
                   whose answer differs: `prompt_contrast` again; and "ground": the box [x0, y0,
                   x1, y1] in 0-1 of the one object the question is about, and "ground_word",
                   the question's word naming it, for the trainer's grounding loss)
    preference     {"task": "preference", "images": [PIL RGB, ...], "question": str, "chosen": str,
                    "rejected": str}   (the DPO stage's pairs; unimm.data.preference)

Understanding questions keep LLaVA's "<image>" placeholders verbatim (the caller
maps them to its own image token). Where placeholders are present, their number
must equal the number of images; with none, the caller decides where images go.

Bad items never raise and never vanish: `get(i)` returns None and the item is
counted once under a short reason (SKIP_REASONS) in `source.skipped`; the index
and reason are kept in `source.skipped_items`, and the first few are logged
with details. Decision: counts are per *distinct item*, not per call, so a
trainer that meets the same bad item in every epoch (or retries it) still
reports how many items are bad. Each DataLoader worker holds its own copy of a
source, so counts made in workers stay in those workers.

Problems with the source as a whole (file not found, no shards, unknown column,
bad option) are configuration errors: they raise ConfigError at construction.

Formats: LLaVA JSON/JSONL (LlavaJsonSource), caption JSONL (CaptionJsonlSource), preference
pairs JSON/JSONL (PreferenceJsonlSource),
WebDataset tar shards (WebDatasetSource), Hugging Face `datasets`
(HFDatasetSource), the built-in shapes world (ShapesSource); `build_source(spec)`
builds any of them from a config mapping.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
import operator
import os
import random
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from ..config import ConfigError, check_keys
from ..images import load_image, to_rgb

__all__ = [
    "SKIP_REASONS", "TASKS", "Source", "LlavaJsonSource", "CaptionJsonlSource", "WebDatasetSource",
    "HFDatasetSource", "ShapesSource", "PreferenceJsonlSource", "build_source",
]

log = logging.getLogger(__name__)

TASKS = ("understanding", "text", "generation")
SHAPES_TASKS = (*TASKS, "preference")  # the shapes world also makes DPO pairs
IMAGE_PLACEHOLDER = "<image>"  # LLaVA's marker, kept verbatim in records

# Reasons an item is skipped (keys of `source.skipped`).
MISSING_IMAGE = "missing image"  # the image file / value is not there
UNREADABLE_IMAGE = "unreadable image"  # there, but not an image PIL can open
MALFORMED_LINE = "malformed line"  # a JSONL line that is not a JSON object
MALFORMED_ENTRY = "malformed entry"  # parsed, but fields missing or of the wrong type
MALFORMED_CONVERSATION = "malformed conversation"  # turns not human/gpt alternating from human
MISSING_TEXT = "missing text"  # no caption / conversation at all
EMPTY_TEXT = "empty text"  # a caption, question or answer that is empty or whitespace
PLACEHOLDER_MISMATCH = "image/placeholder mismatch"
TRUNCATED_SHARD = "truncated shard"  # a tar shard cut short: its tail cannot be indexed or read
SKIP_REASONS = (MISSING_IMAGE, UNREADABLE_IMAGE, MALFORMED_LINE, MALFORMED_ENTRY, MALFORMED_CONVERSATION,
                MISSING_TEXT, EMPTY_TEXT, PLACEHOLDER_MISMATCH, TRUNCATED_SHARD)

_MAX_LOGGED = 10  # per source: details of the first few bad items at WARNING, the rest at DEBUG
_HUMAN_ROLES = ("human", "user")
_GPT_ROLES = ("gpt", "assistant")


class _Skip(Exception):
    """Raised by the parsing helpers for an unusable item; `get` turns it into None + a count."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _check_task(task: str, allowed: Sequence[str], where: str) -> str:
    if task not in allowed:
        raise ConfigError(f"{where}: unknown task {task!r}; choose one of {', '.join(allowed)}")
    return task


# --------------------------------------------------------------------------- base


class Source:
    """Base of all sources: index checking, skip counting, `get` built on `_load`.

    Subclasses set `task`, `name`, implement `__len__` and `_load(i) -> record`,
    raising `_Skip(reason)` for an unusable item.
    """

    task: str
    name: str

    def __init__(self) -> None:
        self.skipped: Counter = Counter()
        self.skipped_items: dict[int, str] = {}  # index -> reason, each bad item counted once

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} items)"

    def get(self, i: int) -> dict | None:
        """Record `i`, or None (counted in `skipped`) if the item is unusable. Bad indices raise IndexError."""
        i = self._check_index(i)
        if i in self.skipped_items:  # known bad (e.g. a malformed line found at construction)
            return None
        try:
            return self._load(i)
        except _Skip as e:
            self._skip(i, e.reason, e.detail)
            return None

    def _load(self, i: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_index(self, i: int) -> int:
        i = operator.index(i)  # ints and numpy integers; TypeError for anything else
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} ({n} items)")
        return i % n

    def _skip(self, i: int, reason: str, detail: str = "") -> None:
        if i in self.skipped_items:
            return
        self.skipped_items[i] = reason
        self.skipped[reason] += 1
        level = logging.WARNING if len(self.skipped_items) <= _MAX_LOGGED else logging.DEBUG
        log.log(level, "%s: skipping item %d (%s)%s", self.name, i, reason, f": {detail}" if detail else "")


# --------------------------------------------------------------------------- shared helpers


def _open_image(path: str | os.PathLike) -> Image.Image:
    """load_image, with its errors turned into skip reasons."""
    try:
        return load_image(path)
    except FileNotFoundError as e:
        raise _Skip(MISSING_IMAGE, str(e)) from None
    except ValueError as e:
        raise _Skip(UNREADABLE_IMAGE, str(e)) from None


def _image_from_bytes(data: bytes, what: str) -> Image.Image:
    """Decode in-memory image bytes (tar members, parquet cells) to RGB; unreadable -> _Skip."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _Skip(UNREADABLE_IMAGE, f"cannot read image {what}: {e}") from None
    return load_image(image)  # the same mode conversion as every other image read


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _text(value: Any, what: str) -> str:
    """A caption: missing -> "missing text", not a string -> "malformed entry", blank -> "empty text"."""
    if value is None:
        raise _Skip(MISSING_TEXT, f"no {what}")
    if not isinstance(value, str):
        raise _Skip(MALFORMED_ENTRY, f"{what} is a {type(value).__name__}, not a string")
    # Captions are stripped (a .txt file's trailing newline is not part of the caption).
    value = value.strip()
    if not value:
        raise _Skip(EMPTY_TEXT, f"{what} is empty")
    return value


def _caption_of(entry: dict, keys: Sequence[str] = ("caption", "text")) -> str:
    """The caption under the first of `keys` present in `entry`."""
    for key in keys:
        if key in entry:
            return _text(entry[key], f"{key!r}")
    raise _Skip(MISSING_TEXT, f"none of the keys {', '.join(map(repr, keys))}")


def _parse_turns(conversations: Any) -> list[tuple[str, str]]:
    """LLaVA `conversations` -> [(question, answer), ...]; text is kept verbatim (placeholders included).

    Turns must alternate human, gpt, human, gpt ... starting with human and ending
    with gpt ("user"/"assistant" are accepted as aliases).
    """
    if not isinstance(conversations, list) or not conversations:
        raise _Skip(MALFORMED_CONVERSATION, "'conversations' must be a non-empty list")
    roles, values = [], []
    for turn in conversations:
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            raise _Skip(MALFORMED_CONVERSATION, f"turn {turn!r} is not {{'from': str, 'value': str}}")
        roles.append(turn["from"].lower())
        values.append(turn["value"])
    expected = [(_HUMAN_ROLES if k % 2 == 0 else _GPT_ROLES) for k in range(len(roles))]
    if len(roles) % 2 or any(r not in ok for r, ok in zip(roles, expected)):
        raise _Skip(MALFORMED_CONVERSATION, f"roles {roles} do not alternate human/gpt starting with human")
    if any(not v.strip() for v in values):
        raise _Skip(EMPTY_TEXT, "a turn has empty text")
    return list(zip(values[0::2], values[1::2]))


def _check_placeholders(turns: list[tuple[str, str]], n_images: int) -> None:
    """Where questions carry "<image>" placeholders, there must be exactly one per image."""
    n_marks = sum(q.count(IMAGE_PLACEHOLDER) for q, _ in turns)
    if n_marks and n_marks != n_images:
        raise _Skip(PLACEHOLDER_MISMATCH, f"{n_marks} placeholder(s) for {n_images} image(s)")


def _understanding(images: list[Image.Image], turns: list[tuple[str, str]]) -> dict:
    return {"task": "understanding", "images": images, "turns": turns}


def _read_records(path: Path) -> tuple[list[Any], dict[int, str]]:
    """A JSON list or JSONL file -> (entries, {index: reason} of entries bad at parse time).

    Decision: a malformed line keeps its slot (its entry is None), so index i
    is always the i-th record of the file, whatever else is broken. Blank
    lines are not records and take no slot. Entries that are not JSON objects
    are bad too ("malformed line" in JSONL, "malformed entry" in a JSON list).
    """
    if not path.is_file():
        raise ConfigError(f"data file not found: {path}")
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"[":  # a JSON list: one document, all or nothing
        try:
            entries = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot parse JSON file {path}: {e}") from e
        bad = {k: MALFORMED_ENTRY for k, e in enumerate(entries) if not isinstance(e, dict)}
    else:  # JSONL: one object per line, each line on its own
        entries, bad = [], {}
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                entry = None
            if not isinstance(entry, dict):
                bad[len(entries)] = MALFORMED_LINE
            entries.append(entry)
    if not entries:
        raise ConfigError(f"data file {path} holds no records")
    return entries, bad


class _RecordFileSource(Source):
    """A JSON/JSONL file parsed once at construction; images opened lazily, relative to `image_root`."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None) -> None:
        super().__init__()
        self.path = Path(path)
        # Decision: relative image paths default to the annotation file's directory
        # (where write_llava_json / write_caption_jsonl put them).
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.entries, bad = _read_records(self.path)
        for i, reason in bad.items():
            self._skip(i, reason, f"line/entry {i} of {self.path} is not a JSON object")

    def __len__(self) -> int:
        return len(self.entries)


# --------------------------------------------------------------------------- LLaVA


class LlavaJsonSource(_RecordFileSource):
    """LLaVA-style conversations: a JSON list (or JSONL) of
    {"id", "image": path | [paths] | absent, "conversations": [{"from": "human"|"gpt", "value"}, ...]}.

    The file is parsed once here; images are opened in get(). An entry without
    "image" is a text-only conversation (record "images" is []).
    """

    task = "understanding"

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        self.name = f"llava:{path}"
        super().__init__(path, image_root)

    def _load(self, i: int) -> dict:
        entry = self.entries[i]
        turns = _parse_turns(entry.get("conversations"))
        paths = _image_paths(entry.get("image"))
        _check_placeholders(turns, len(paths))  # before any image read: cheap checks first
        return _understanding([_open_image(_resolve(p, self.image_root)) for p in paths], turns)


def _image_paths(value: Any) -> list[str]:
    """LLaVA's "image": absent/None -> [], a path -> [path], a list of paths -> the list."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise _Skip(MALFORMED_ENTRY, f"'image' must be a path or a list of paths, got {value!r}")
    return value


# --------------------------------------------------------------------------- caption JSONL


class CaptionJsonlSource(_RecordFileSource):
    """Caption lines {"image": path, "caption": str} ("text" is accepted for "caption"), optionally
    with "regions": [{"box": [x0, y0, x1, y1] in 0-1 of the image, "text": str}] (grounded captions)
    and "swapped_caption": str (the caption's words bound to other objects; `prompt_contrast`).

    task="generation" yields (image, caption) records; task="text" yields the
    captions as text records and never reads an image (nor needs "image").
    """

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 task: str = "generation") -> None:
        self.task = _check_task(task, ("generation", "text"), "caption JSONL source")
        self.name = f"captions:{path}" + (" (text)" if task == "text" else "")
        super().__init__(path, image_root)

    def _load(self, i: int) -> dict:
        entry = self.entries[i]
        caption = _caption_of(entry)
        if self.task == "text":
            return {"task": "text", "text": caption}
        path = entry.get("image")
        if not isinstance(path, str) or not path:
            raise _Skip(MALFORMED_ENTRY, f"'image' must be a path, got {path!r}")
        record = {"task": "generation", "image": _open_image(_resolve(path, self.image_root)), "caption": caption}
        if "regions" in entry:  # grounded captions (GRIT, Flickr30k Entities style)
            record["regions"] = _regions_of(entry["regions"])
        if "swapped_caption" in entry:
            swapped = entry["swapped_caption"]
            if not isinstance(swapped, str) or not swapped.strip():
                raise _Skip(MALFORMED_ENTRY, f"'swapped_caption' must be a non-empty string, got {swapped!r}")
            record["swapped_caption"] = swapped
        return record


def _regions_of(regions) -> list[dict]:
    """Validated [{"box": [x0, y0, x1, y1] as shares of the image's width and height, "text": str}, ...]."""
    if not isinstance(regions, list):
        raise _Skip(MALFORMED_ENTRY, f"'regions' must be a list, got {type(regions).__name__}")
    out = []
    for r in regions:
        box = r.get("box") if isinstance(r, dict) else None
        text = r.get("text") if isinstance(r, dict) else None
        ok = (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in box)
              and box[0] < box[2] and box[1] < box[3])
        if not ok or not isinstance(text, str) or not text.strip():
            raise _Skip(MALFORMED_ENTRY, "each region must be {'box': [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and "
                                         f"0 <= y0 < y1 <= 1, 'text': a non-empty string}}, got {r!r}")
        out.append({"box": [float(v) for v in box], "text": text})
    return out


# --------------------------------------------------------------------------- preference pairs


class PreferenceJsonlSource(_RecordFileSource):
    """DPO pairs (RLHF-V / LLaVA-RLHF style): a JSON list or JSONL of
    {"image": path | [paths] | absent, "question": str, "chosen": str, "rejected": str}
    ("prompt" is accepted for "question"; "<image>" placeholders as in LLaVA data)."""

    task = "preference"

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> None:
        self.name = f"preference:{path}"
        super().__init__(path, image_root)

    def _load(self, i: int) -> dict:
        entry = self.entries[i]
        question = _caption_of(entry, ("question", "prompt"))
        chosen, rejected = _text(entry.get("chosen"), "'chosen'"), _text(entry.get("rejected"), "'rejected'")
        if chosen == rejected:
            raise _Skip(MALFORMED_ENTRY, "'chosen' and 'rejected' are the same answer")
        paths = _image_paths(entry.get("image"))
        _check_placeholders([(question, chosen)], len(paths))
        images = [_open_image(_resolve(p, self.image_root)) for p in paths]
        return {"task": "preference", "images": images, "question": question, "chosen": chosen,
                "rejected": rejected}


# --------------------------------------------------------------------------- WebDataset


_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")  # preference order when a sample has several
# WebDataset's key rule: the key is the member path up to the first dot of its file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")


def _braceexpand(pattern: str) -> list[str]:
    try:
        from braceexpand import braceexpand  # installed with webdataset
    except ImportError:  # pragma: no cover - exercised only without webdataset
        return _simple_braceexpand(pattern)
    return list(braceexpand(pattern))


def _simple_braceexpand(pattern: str) -> list[str]:
    """Expand {a,b} and zero-padded {000..003} ranges (the shard patterns WebDataset uses)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") else 0
        items = [str(k).zfill(width) for k in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [out for item in items for out in _simple_braceexpand(head + item + tail)]


def _expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """A path, glob, brace pattern, or a list of them -> shard paths (globs sorted, order otherwise kept)."""
    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    paths: list[Path] = []
    for spec in specs:
        for pattern in _braceexpand(os.path.expanduser(os.fspath(spec))):
            if glob.has_magic(pattern):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    raise ConfigError(f"no WebDataset shards match {pattern!r}")
                paths += map(Path, matches)
            elif not os.path.isfile(pattern):
                raise ConfigError(f"WebDataset shard not found: {pattern}")
            else:
                paths.append(Path(pattern))
    if not paths:
        raise ConfigError(f"no WebDataset shards given ({shards!r})")
    return paths


_Member = tuple[int, int]  # (offset of the data in the tar file, size)


def _index_shard(path: Path) -> tuple[list[dict[str, _Member]], bool]:
    """Samples of one shard, in order of first appearance: [{ext: (offset, size)}], and whether it is damaged."""
    samples: dict[str, dict[str, _Member]] = {}
    try:
        tar = tarfile.open(path, "r:")  # uncompressed only: random access needs plain offsets
    except tarfile.TarError as e:
        raise ConfigError(f"cannot index WebDataset shard {path}: not an uncompressed tar file ({e})") from e
    with tar:
        try:
            for member in tar:
                m = _KEY_EXT.match(member.name)
                if member.isfile() and m:  # hidden files (".name") and extension-less names are not sample parts
                    samples.setdefault(m.group(1), {})[m.group(2).lower()] = (member.offset_data, member.size)
        except tarfile.TarError:  # tarfile raises for some damaged headers ...
            return list(samples.values()), True
        end = tar.offset  # ... and silently stops at others: where it stopped must be the zero-filled end
    return list(samples.values()), _damaged_after(path, end)


def _damaged_after(path: Path, end: int) -> bool:
    """True if the tar file is shorter than `end` or holds non-zero bytes after it (where only padding belongs)."""
    if path.stat().st_size < end:
        return True
    with open(path, "rb") as f:
        f.seek(end)
        while chunk := f.read(1 << 20):
            if chunk.count(0) != len(chunk):
                return True
    return False


class WebDatasetSource(Source):
    """WebDataset-format tar shards, read by index.

    Decision: this reads the WebDataset *format* (files grouped into samples by
    key: KEY.png|jpg|jpeg|webp + KEY.txt or KEY.json) with the stdlib `tarfile`,
    not through webdataset's streaming pipeline: every member's offset is
    indexed at construction, so get(i) is random access and a resumed run can
    address exactly the items it has not seen. Shards must be uncompressed tars.

    task "generation": caption from KEY.txt, else KEY.json's "caption"/"text".
    task "understanding": KEY.json with LLaVA "conversations"; the sample's image
    (if any) is the one image. task "text": the captions as text records.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], task: str = "generation") -> None:
        super().__init__()
        self.task = _check_task(task, TASKS, "WebDataset source")
        self.shards = _expand_shards(shards)
        more = len(self.shards) - 1
        self.name = f"webdataset:{self.shards[0]}" + (f" +{more} shards" if more else "")
        self._samples: list[tuple[int, dict[str, _Member]]] = []  # (shard index, {ext: member})
        for k, path in enumerate(self.shards):
            samples, truncated = _index_shard(path)
            self._samples += [(k, s) for s in samples]
            if truncated:  # items lost past the damage cannot be counted one by one: count the shard
                self.skipped[TRUNCATED_SHARD] += 1
                log.warning("%s: shard %s is truncated or damaged; only the samples before the damage are used",
                            self.name, path)

    def __len__(self) -> int:
        return len(self._samples)

    def _read(self, shard: int, member: _Member) -> bytes:
        # Opened per read: no file handle to share across DataLoader worker processes.
        offset, size = member
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise _Skip(TRUNCATED_SHARD, f"member at offset {offset} of {self.shards[shard]} is cut short")
        return data

    def _json(self, shard: int, files: dict[str, _Member]) -> dict | None:
        if "json" not in files:
            return None
        try:
            value = json.loads(self._read(shard, files["json"]))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _Skip(MALFORMED_ENTRY, f"unreadable .json member: {e}") from None
        if not isinstance(value, dict):
            raise _Skip(MALFORMED_ENTRY, ".json member is not an object")
        return value

    def _caption(self, shard: int, files: dict[str, _Member]) -> str:
        if "txt" in files:
            try:
                return _text(self._read(shard, files["txt"]).decode("utf-8"), ".txt caption")
            except UnicodeDecodeError:
                raise _Skip(MALFORMED_ENTRY, ".txt caption is not UTF-8") from None
        meta = self._json(shard, files)
        if meta is None:
            raise _Skip(MISSING_TEXT, "sample has no .txt or .json")
        return _caption_of(meta)

    def _images(self, shard: int, files: dict[str, _Member]) -> list[Image.Image]:
        ext = next((e for e in _IMAGE_EXTS if e in files), None)
        if ext is None:
            return []
        return [_image_from_bytes(self._read(shard, files[ext]), f".{ext} member of {self.shards[shard]}")]

    def _load(self, i: int) -> dict:
        shard, files = self._samples[i]
        if self.task == "understanding":
            meta = self._json(shard, files)
            if meta is None or "conversations" not in meta:
                raise _Skip(MISSING_TEXT, "sample has no .json with 'conversations'")
            turns = _parse_turns(meta["conversations"])
            n_images = int(any(e in files for e in _IMAGE_EXTS))
            _check_placeholders(turns, n_images)
            return _understanding(self._images(shard, files), turns)
        caption = self._caption(shard, files)
        if self.task == "text":
            return {"task": "text", "text": caption}
        images = self._images(shard, files)
        if not images:
            raise _Skip(MISSING_IMAGE, f"sample has none of .{', .'.join(_IMAGE_EXTS)}")
        return {"task": "generation", "image": images[0], "caption": caption}


# --------------------------------------------------------------------------- Hugging Face datasets


def _load_hf(spec: Any, split: str, cache_dir: str | None):
    """A local directory (imagefolder, or parquet files in it), parquet file(s)/glob, or a loaded Dataset."""
    from ..extras import require

    datasets = require("datasets", "train", "the `hf` data format")

    if isinstance(spec, datasets.DatasetDict):
        return _pick_split(spec, split, "the DatasetDict")
    if isinstance(spec, datasets.Dataset):
        return spec
    files = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files = [os.path.expanduser(os.fspath(f)) for f in files]
    # Decision: only local data. Hub names would need the network; download first, then point here.
    if len(files) == 1 and os.path.isdir(files[0]):
        parquet = sorted(glob.glob(os.path.join(files[0], "**", "*.parquet"), recursive=True))
        loaded = (datasets.load_dataset("parquet", data_files=parquet, cache_dir=cache_dir) if parquet
                  else datasets.load_dataset("imagefolder", data_dir=files[0], cache_dir=cache_dir))
    else:
        missing = [f for f in files if not glob.has_magic(f) and not os.path.isfile(f)]
        if missing or not all(f.endswith(".parquet") for f in files):
            raise ConfigError(f"Hugging Face source {spec!r}: expected a local directory, .parquet file(s) "
                              f"or a datasets.Dataset (hub names are not fetched); not found: {missing or files}")
        loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir)
    return _pick_split(loaded, split, str(spec))


def _path_root(spec: Any) -> Path:
    """Where relative path strings in an image column point from: the spec's directory, else the cwd."""
    if isinstance(spec, (str, os.PathLike)) and not glob.has_magic(os.fspath(spec)):
        path = Path(spec).expanduser()
        return path if path.is_dir() else path.parent
    return Path.cwd()


def _pick_split(dd, split: str, what: str):
    if split not in dd:
        raise ConfigError(f"{what} has no split {split!r}; splits: {', '.join(dd)}")
    return dd[split]


class HFDatasetSource(Source):
    """A Hugging Face `datasets` dataset, read offline.

    `spec`: a local directory (loaded as "imagefolder", captions from its
    metadata.jsonl/.csv; or, if it holds .parquet files, as parquet), parquet
    file(s) or a glob, or an already-loaded `datasets.Dataset`/`DatasetDict`.
    Images may be an Image feature, paths, or bytes; they are decoded here (the
    Image feature is cast to decode=False) so a bad image is a skip, not a crash.

    task "generation": (image, caption); "text": the captions; "understanding":
    a LLaVA-style "conversations" column with the row's image (none if null).
    The caption column defaults to the first of "caption", "text" present.
    """

    def __init__(self, spec: Any, task: str = "generation", image_column: str = "image",
                 caption_column: str | None = None, split: str = "train", cache_dir: str | None = None) -> None:
        super().__init__()
        self.task = _check_task(task, TASKS, "Hugging Face source")
        ds = _load_hf(spec, split, cache_dir)
        self.name = f"hf:{spec if isinstance(spec, (str, os.PathLike)) else type(spec).__name__}"
        self.root = _path_root(spec)
        self.image_column = self._image_column(ds, image_column)
        self.text_column = self._text_column(ds, caption_column)
        self.dataset = self._undecoded(ds)

    def _columns_error(self, ds, what: str) -> ConfigError:
        return ConfigError(f"{self.name}: {what}; columns: {', '.join(ds.column_names)}")

    def _image_column(self, ds, column: str) -> str | None:
        if self.task == "text":
            return None
        if column in ds.column_names:
            return column
        if self.task == "understanding":
            return None  # text-only conversations
        raise self._columns_error(ds, f"no image column {column!r}")

    def _text_column(self, ds, column: str | None) -> str:
        if self.task == "understanding":
            column = column or "conversations"
        else:
            column = column or next((c for c in ("caption", "text") if c in ds.column_names), None)
        if column is None or column not in ds.column_names:
            raise self._columns_error(ds, f"no {'caption' if column is None else repr(column)} column")
        return column

    def _undecoded(self, ds):
        """Keep the Image feature's raw {"bytes", "path"}: decoding happens in get(), where errors are skips."""
        from datasets import Image as ImageFeature

        keep = [c for c in (self.image_column, self.text_column) if c]
        ds = ds.select_columns(keep)  # don't carry unused columns (cheap: Arrow views)
        if self.image_column and isinstance(ds.features[self.image_column], ImageFeature):
            ds = ds.cast_column(self.image_column, ImageFeature(decode=False))
        return ds

    def __len__(self) -> int:
        return len(self.dataset)

    def _image(self, value: Any) -> Image.Image:
        if value is None:
            raise _Skip(MISSING_IMAGE, "image is null")
        if isinstance(value, dict):  # the Image feature, undecoded
            if value.get("bytes"):
                return _image_from_bytes(value["bytes"], str(value.get("path") or "bytes"))
            value = value.get("path")
            if not value:
                raise _Skip(MISSING_IMAGE, "image has neither bytes nor path")
        if isinstance(value, (bytes, bytearray)):
            return _image_from_bytes(bytes(value), "bytes")
        if isinstance(value, str):
            return _open_image(_resolve(value, self.root))
        if isinstance(value, Image.Image):
            return to_rgb(value)
        raise _Skip(MALFORMED_ENTRY, f"image value of type {type(value).__name__}")

    def _load(self, i: int) -> dict:
        row = self.dataset[i]
        if self.task == "understanding":
            turns = _parse_turns(row[self.text_column])
            value = row.get(self.image_column) if self.image_column else None
            _check_placeholders(turns, int(value is not None))
            return _understanding([] if value is None else [self._image(value)], turns)
        caption = _text(row[self.text_column], repr(self.text_column))
        if self.task == "text":
            return {"task": "text", "text": caption}
        return {"task": "generation", "image": self._image(row[self.image_column]), "caption": caption}


# --------------------------------------------------------------------------- shapes world


class ShapesSource(Source):
    """The built-in shapes world as any task (options are ShapesWorldConfig fields, e.g. image_size, seed).

    understanding: the scene image with its QA pairs as turns, the first question
    prefixed "<image>\\n" as in LLaVA; text: the captions; generation: (image, caption);
    preference: one of the scene's questions with its answer chosen and a wrong one rejected
    (half of them "describe the image" against a hallucinating description). With
    `sequence` (understanding only): items of several images, "compare" (two scenes) or
    "clip" (`frames` frames of a moving object), from `unimm.data.sequences`.
    `questions` (understanding only): how many of the scene's questions an item asks, taken
    from their shuffled order (None: all). With all of them an earlier turn often names the
    object a later question asks about ("Where is the black circle?" before "What colour is the
    circle?"), so the answer can be copied from the text; with 1 it must be read off the image,
    as the evaluator asks it. Every item is usable.
    """

    def __init__(self, task: str, reference: bool = False, sequence: str | None = None, frames: int = 4,
                 questions: int | None = None, **shapes_world_options: Any) -> None:
        from .sequences import SEQUENCES
        from .shapes import ShapesWorld

        super().__init__()
        self.task = _check_task(task, SHAPES_TASKS, "shapes source")
        if not isinstance(reference, bool):
            raise ConfigError(f"shapes source: reference must be true or false, got {reference!r}")
        if reference and task != "generation":
            raise ConfigError(f"shapes source: reference pairs are generation data, not {task!r}")
        if sequence is not None and (sequence not in SEQUENCES or task != "understanding"):
            raise ConfigError(f"shapes source: sequence must be one of {', '.join(SEQUENCES)} with task "
                              f"understanding, got sequence={sequence!r}, task={task!r}")
        if not (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 2):
            raise ConfigError(f"shapes source: frames must be an int >= 2, got {frames!r}")
        if questions is not None:
            if not (isinstance(questions, int) and not isinstance(questions, bool) and questions >= 1):
                raise ConfigError(f"shapes source: questions must be an int >= 1 (or null: all), got {questions!r}")
            if task != "understanding" or sequence is not None:
                raise ConfigError("shapes source: questions applies to single-image understanding items, not "
                                  f"task={task!r}" + (f" with sequence={sequence!r}" if sequence else ""))
        self.questions = questions
        self.reference = reference  # IP-Adapter pairs (shapes.reference_pair) instead of the world's scenes
        self.sequence, self.frames = sequence, frames  # several images per item (unimm.data.sequences)
        self.world = ShapesWorld(**shapes_world_options)
        cfg = self.world.config
        what = " reference pairs" if reference else f" {sequence}" if sequence else ""
        self.name = f"shapes:{task}{what} (seed={cfg.seed}, n={cfg.num_samples})"

    def __len__(self) -> int:
        return len(self.world)

    def _load(self, i: int) -> dict:
        if self.task == "text":  # no rendering needed
            return {"task": "text", "text": self.world[i].caption}
        if self.sequence:
            from .sequences import sequence_record

            return sequence_record(self.sequence, self.world, i, self.world.config.image_size, self.frames)
        if self.reference:
            from .shapes import REFERENCE_SIZE, reference_pair, render

            cfg = self.world.config
            target, ref = reference_pair(cfg, i)
            return {"task": "generation", "image": render(target, cfg.image_size, cfg.antialias),
                    "caption": target.caption,
                    "reference": render(ref, max(cfg.image_size, REFERENCE_SIZE), cfg.antialias)}
        s = self.world.sample(i)
        if self.task == "generation":
            # Each object's box and name: what a region-level objective (e.g. the SigLIP
            # trainer's region_tagging_weight) reads; other consumers ignore it.
            record = {"task": "generation", "image": s["image"], "caption": s["caption"],
                      "regions": [{"box": [o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r],
                                   "text": f"a {o.size} {o.colour} {o.shape}"} for o in s["scene"].objects]}
            from .shapes import swapped_caption

            swapped = swapped_caption(s["scene"])
            if swapped is not None:  # two objects: their shapes exchanged (the trainer's prompt_contrast)
                record["swapped_caption"] = swapped
            return record
        if self.task == "preference":  # one question per scene, half of them "describe the image"
            from .preference import rejected_answer

            rng = random.Random(f"unimm-preference/{self.world.config.seed}/{i}")
            captions = [qa for qa in s["qa"] if qa.type == "caption"]
            qa = rng.choice(captions if captions and rng.random() < 0.5 else s["qa"])
            return {"task": "preference", "images": [s["image"]], "question": f"{IMAGE_PLACEHOLDER}\n{qa.question}",
                    "chosen": qa.answer, "rejected": rejected_answer(s["scene"], qa, rng)}
        turns = [(f"{IMAGE_PLACEHOLDER}\n{qa.question}" if k == 0 else qa.question, qa.answer)
                 for k, qa in enumerate(s["qa"][:self.questions])]
        record = _understanding([s["image"]], turns)
        if len(turns) == 1:  # one question: its words bound to the other object, if that changes the answer
            from .shapes import named_object, naming_word, swapped_question

            swapped = swapped_question(s["scene"], s["qa"][0])
            if swapped is not None:  # the trainer's prompt_contrast
                record["swapped_question"] = f"{IMAGE_PLACEHOLDER}\n{swapped}"
            own = named_object(s["scene"], s["qa"][0])
            if own is not None:  # the box of the object asked about (the trainer's grounding loss)
                record["ground"] = [own.cx - own.r, own.cy - own.r, own.cx + own.r, own.cy + own.r]
                word = naming_word(s["scene"], s["qa"][0])
                if word is not None:  # the question's word for it ("diamond"): grounding_at: word
                    record["ground_word"] = word
        return record


class ControlMapSource(Source):
    """Another generation source's items, marked for ControlNet maps of their images:
    record["control"] = (control type, ...). The trainer makes the maps at the model's size
    with `unimm.data.control.map_for_model`, the code that makes the maps of user pictures."""

    def __init__(self, source: Source, kinds) -> None:
        from .control import check_control_type

        super().__init__()
        if source.task != "generation":
            raise ConfigError(f"control maps go with generation data, not {source.task!r} ({source.name})")
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not kinds:
            raise ConfigError("control names no control type")
        self.kinds = [check_control_type(k) for k in kinds]
        self.source, self.task = source, source.task
        self.name = f"{source.name} + {', '.join(self.kinds)} maps"
        self.skipped, self.skipped_items = source.skipped, source.skipped_items

    def __len__(self) -> int:
        return len(self.source)

    def get(self, i: int) -> dict | None:
        record = self.source.get(i)
        return None if record is None else {**record, "control": tuple(self.kinds)}


# --------------------------------------------------------------------------- from a config mapping


def _shapes_keys() -> list[str]:
    from .shapes import ShapesWorldConfig

    return [f.name for f in dataclasses.fields(ShapesWorldConfig)]


# format -> (builder(options) -> source, required keys, optional keys). Keys are the constructors'
# argument names, except "path" for HFDatasetSource's `spec`.
_FORMATS: dict[str, tuple[Callable[[dict], Source], tuple[str, ...], Callable[[], Iterable[str]]]] = {
    "llava": (lambda o: LlavaJsonSource(**o), ("path",), lambda: ("image_root",)),
    "captions": (lambda o: CaptionJsonlSource(**o), ("path",), lambda: ("image_root", "task")),
    "webdataset": (lambda o: WebDatasetSource(**o), ("shards",), lambda: ("task",)),
    "hf": (lambda o: HFDatasetSource(o.pop("path"), **o), ("path",),
           lambda: ("task", "image_column", "caption_column", "split", "cache_dir")),
    "shapes": (lambda o: ShapesSource(**o), ("task",),
               lambda: [*_shapes_keys(), "reference", "sequence", "frames", "questions"]),
    "preference": (lambda o: PreferenceJsonlSource(**o), ("path",), lambda: ("image_root",)),
}


def build_source(spec: dict) -> Source:
    """A source from a config mapping, e.g. {"format": "llava", "path": ..., "image_root": ...},
    {"format": "captions", "path": ..., "task": "text"}, {"format": "webdataset", "shards": ..., "task": ...},
    {"format": "hf", "path": ..., "caption_column": ...}, {"format": "shapes", "task": ..., "num_samples": ...}.
    Any generation source may add "control": [edges, segmentation] for ControlNet maps of its images.

    Unknown formats, unknown keys and missing required keys raise ConfigError naming them.
    """
    if not isinstance(spec, dict):
        raise ConfigError(f"a data source spec must be a mapping, got {type(spec).__name__}")
    options = dict(spec)
    control = options.pop("control", None)  # any generation source: ControlNet maps of its images
    if control is not None:
        try:
            return ControlMapSource(build_source(options), control)
        except ValueError as e:
            raise ConfigError(f"bad data source control: {e}") from None
    fmt = options.pop("format", None)
    if fmt not in _FORMATS:
        raise ConfigError(f"unknown data source format {fmt!r}; choose one of {', '.join(_FORMATS)}")
    build, required, optional = _FORMATS[fmt]
    where = f"data source (format {fmt!r})"
    check_keys(options, ["format", *required, *optional()], where)
    missing = [k for k in required if k not in options]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(map(repr, missing))}")
    try:
        return build(options)
    except TypeError as e:  # e.g. a wrong value type reaching a constructor
        raise ConfigError(f"bad {where}: {e}") from e

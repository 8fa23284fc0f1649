"""Generation targets computed once: the frozen image tokenizer's output for every item of a source.

While the image tokenizer is frozen, the target of generation item j (VQ ids or
VAE latents) never changes, yet without a cache every step renders or decodes
the image and runs the tokenizer's encoder again. `TargetCache.build_or_load`
does that once per source and stores the result in `data.cache_dir`:

    targets-<key>.safetensors   "targets" (N, ...) and "valid" (N,) tensors, and for a source with
                                ControlNet maps (`control: [edges, ...]`) "control.<kind>" (N, ...):
                                each item's map, made from its image as at sampling, encoded alike
    targets-<key>.json          the captions (and any swapped captions), the source spec and the counts

A source with reference pictures for an IP-Adapter (`reference: true`) keeps its targets here
too; the reference is drawn again from the source when the item is read (rendering a pair
costs ~1 ms, encoding the target ~18: measured in BENCHMARKS.md), and the item's caption must
be the one cached, or the read is refused.

`key` hashes the source spec, the generation image size and the tokenizer's
config and weights, so a changed source or tokenizer never reads a stale cache.
Both files are written atomically and read with safetensors and JSON: nothing
in a cache is unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..config import to_dict

CACHE_VERSION = 3  # 2: swapped captions kept; 3: shapes mention_order "raster" by drawn top rows


def tokenizer_fingerprint(tokenizer: torch.nn.Module) -> str:
    h = hashlib.sha256(json.dumps(to_dict(tokenizer.resolved_config()), sort_keys=True).encode())
    for name, t in sorted(tokenizer.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def source_fingerprint(spec: dict, length: int) -> dict:
    """What identifies a source's contents beyond its spec: its length, and the size and
    modification time of every file or folder the spec names (an edited caption file, a new
    shard or a changed image folder gives another key)."""
    import glob

    files = {}
    for key in ("path", "shards", "image_root"):
        value = spec.get(key)
        if not isinstance(value, (str, os.PathLike)):
            continue
        for name in sorted(glob.glob(str(value))) or [str(value)]:
            p = Path(name).resolve()
            try:
                st = p.stat()
                files[str(p)] = [st.st_size, st.st_mtime_ns] + ([len(os.listdir(p))] if p.is_dir() else [])
            except OSError:
                files[str(p)] = None
    return {"length": length, "files": files}


def cache_key(spec: dict, image_size: int, fingerprint: str, source: dict | None = None) -> str:
    payload = json.dumps({"version": CACHE_VERSION, "source": spec, "image_size": image_size,
                          "tokenizer": fingerprint, "contents": source}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


class TargetCache:
    """Item j of a generation source as {"task", "caption", "targets"} (and its "swapped_caption"
    where the source gave one) without rendering or encoding it."""

    def __init__(self, captions: list[str | None], targets: torch.Tensor, valid: torch.Tensor, name: str,
                 swapped: list[str | None] | None = None, control: dict[str, torch.Tensor] | None = None):
        self.captions, self.targets, self.valid, self.name = captions, targets, valid, name
        self.swapped = swapped or [None] * len(captions)
        self.control = control or {}  # kind -> (N, ...) encoded ControlNet maps
        self.references = None  # the source, for one whose items carry reference pictures

    def __len__(self) -> int:
        return len(self.captions)

    def get(self, j: int) -> dict | None:
        if not bool(self.valid[j]):
            return None  # the source skipped this item when the cache was built (counted then)
        record = {"task": "generation", "caption": self.captions[j], "targets": self.targets[j]}
        if self.control:
            record["control_targets"] = {k: t[j] for k, t in self.control.items()}
        if self.swapped[j] is not None:
            record["swapped_caption"] = self.swapped[j]
        if self.references is not None:  # the item's reference picture, drawn again
            again = self.references.get(j)
            if again is None or again["caption"] != self.captions[j]:
                raise ValueError(f"the {self.name} source no longer gives item {j} as it did when its targets were "
                                 "cached (another caption); delete the cache to rebuild it")
            record["reference"] = again["reference"]
        return record

    @classmethod
    def build_or_load(cls, source, spec: dict, model, cache_dir, main_process: bool = True,
                      batch_size: int = 64, progress: bool = True) -> "TargetCache":
        """Load the cache for (source, tokenizer), building it first if absent (main process only)."""
        image_size = model.image_tokenizer.config.image_size
        key = cache_key(spec, image_size, tokenizer_fingerprint(model.image_tokenizer),
                        source_fingerprint(spec, len(source)))
        root = Path(cache_dir)
        tensors, meta = root / f"targets-{key}.safetensors", root / f"targets-{key}.json"
        if main_process and not (tensors.is_file() and meta.is_file()):
            captions, swapped, targets, valid, control = _compute(source, model, batch_size, progress)
            root.mkdir(parents=True, exist_ok=True)
            _write_atomic(tensors, lambda p: _save_tensors(p, targets, valid, control))
            _write_atomic(meta, lambda p: p.write_text(json.dumps(
                {"version": CACHE_VERSION, "source": spec, "image_size": image_size, "items": len(captions),
                 "valid": int(valid.sum()), "captions": captions, "swapped_captions": swapped}, default=str)))
        cache = cls.load(tensors, meta)
        if len(cache) != len(source):  # the key covers this; a hand-copied cache might not
            raise ValueError(f"the target cache {tensors} holds {len(cache)} items but the source has {len(source)}; "
                             f"delete it to rebuild")
        if spec.get("reference"):
            cache.references = source
        return cache

    @classmethod
    def load(cls, tensors: Path, meta: Path) -> "TargetCache":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(tensors))
            info = json.loads(meta.read_text())
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"the target cache {tensors} is damaged ({e}); delete it to rebuild") from None
        control = {k[len("control."):]: t for k, t in data.items() if k.startswith("control.")}
        return cls(info["captions"], data["targets"], data["valid"].bool(), info["source"].get("format", "source"),
                   info.get("swapped_captions"), control)


def _save_tensors(path: Path, targets: torch.Tensor, valid: torch.Tensor, control: dict) -> None:
    from safetensors.torch import save_file

    save_file({"targets": targets.contiguous(), "valid": valid.to(torch.uint8),
               **{f"control.{k}": t.contiguous() for k, t in control.items()}}, str(path))


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@torch.no_grad()
def _compute(source, model, batch_size: int, progress: bool):
    """(captions, swapped captions, targets, valid, {control kind: encoded maps}) of every item."""
    from tqdm.auto import tqdm

    from ..data.control import map_for_model

    tok = model.image_tokenizer
    was_training = tok.training
    tok.eval()
    param = next(tok.parameters())
    size = tok.config.image_size
    captions: list[str | None] = []
    swapped: list[str | None] = []
    chunks: dict[str, list[torch.Tensor]] = {}  # "targets" and each control kind -> encoded batches
    pending: dict[str, list[torch.Tensor]] = {}

    def flush():
        for name, batch in pending.items():
            x = torch.stack(batch).to(device=param.device, dtype=param.dtype)
            t = model.images_to_targets(x).cpu()  # ids (int) or latents (float), whatever the paradigm reads
            chunks.setdefault(name, []).append(t.float() if t.is_floating_point() else t.to(torch.int32))
        pending.clear()

    rows: list[int] = []  # index of each encoded item
    for j in tqdm(range(len(source)), desc="caching generation targets", unit="img", disable=not progress):
        record = source.get(j)
        if record is None:
            captions.append(None)
            swapped.append(None)
            continue
        captions.append(record["caption"])
        swapped.append(record.get("swapped_caption"))
        pending.setdefault("targets", []).append(tok.preprocess(record["image"]))  # the tokenizer's own transform
        for kind in record.get("control") or ():  # the map the trainer would make from this image
            pending.setdefault(kind, []).append(tok.preprocess(map_for_model(record["image"], kind, size)))
        rows.append(j)
        if len(pending["targets"]) == batch_size:
            flush()
    flush()
    tok.train(was_training)

    def spread(name):  # encoded rows -> (N, ...) with zeros where the source skipped an item
        encoded = torch.cat(chunks[name]) if name in chunks else torch.zeros(0)
        out = torch.zeros((len(captions), *encoded.shape[1:]), dtype=encoded.dtype)
        if rows:
            out[rows] = encoded
        return out

    valid = torch.zeros(len(captions), dtype=torch.bool)
    valid[rows] = True
    control = {kind: spread(kind) for kind in chunks if kind != "targets"}
    return captions, swapped, spread("targets"), valid, control

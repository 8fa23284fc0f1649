"""Reusing a conversation's KV cache across chat turns.

A follow-up turn re-sends the whole conversation: earlier questions, their
images and answers, then the new question. Its first tokens are exactly the
tokens the previous call already ran through the backbone (that call's
prompt and the answer it generated), so their keys and values can be kept
instead of recomputed, images included. `PrefixCache` holds the cache of the
last conversation with the token ids and image fingerprints it covers; the
next call takes the longest prefix that is provably the same (equal ids, and
equal pixels for every image in it), crops the cache to it and prefills only
the rest. Nothing is assumed about the caller: a different conversation, an
edited answer or a changed image simply shortens the reused prefix (to zero
if need be), so the answer is the one a fresh prefill would give.

One entry is kept (the app and the API hold one conversation at a time); a
call takes it out under a lock, so two calls at once never share a cache.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass

import torch

__all__ = ["PrefixCache", "image_fingerprints", "image_spans", "weights_key"]

# Bumped whenever a module of a model `weights_key` has seen gains or swaps a parameter, buffer
# or submodule (torch's global registration hooks), so `weights_key` can keep that model's
# parameter list between calls instead of walking its modules every turn (about 1 ms on the
# default model, a third of a reused turn's wait). Registrations into modules outside every
# such model do not count: transformers' forward slices its layer list into a new ModuleList
# on every call, which would otherwise invalidate the list on every turn; a new module joins a
# seen model only through a registration on one of its modules, which counts.
_structure = [0]
_seen: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def _bump(module, *_args) -> None:
    # Under torch.compile the hook is traced, not run: registrations there are on the temporary
    # ModuleLists that slicing makes, and tracing a WeakSet lookup installs guards on the set's
    # weak references that fail to build once one of them dies (seen in CI).
    if torch.compiler.is_compiling():
        return
    if module in _seen:
        _structure[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_bump)
torch.nn.modules.module.register_module_module_registration_hook(_bump)
torch.nn.modules.module.register_module_buffer_registration_hook(_bump)


def weights_key(model: torch.nn.Module) -> tuple:
    """What a cached conversation depends on besides its tokens: the model's parameter list and each
    weight's storage and in-place version, so loading, training or moving the model changes it."""
    known = getattr(model, "_unimm_params", None)
    if known is None or known[0] != _structure[0]:
        _seen.update(model.modules())
        known = (_structure[0], tuple(model.parameters()))
        object.__setattr__(model, "_unimm_params", known)  # a plain attribute: no registration, no bump
    # Storage addresses and in-place versions: a cast or a move makes new storage (the old one is
    # alive while the new one is made, so the address differs), an edit in place bumps the version,
    # and a swapped parameter rebuilds the list above.
    params = known[1]
    return known[0], tuple([p.data_ptr() for p in params]), tuple([p._version for p in params])


def image_fingerprints(pixel_values: torch.Tensor | None, views: list[int] | None = None) -> list[bytes]:
    """A digest of each processed image: equal pixels, equal digest. `pixel_values` (V, C, H, W)
    holds `views[k]` rows for image k (a tiled image's thumbnail and tiles), one each by default."""
    if pixel_values is None:
        return []
    views = views or [1] * pixel_values.shape[0]
    out, start = [], 0
    for n in views:
        digest = hashlib.blake2b(digest_size=16)
        for p in pixel_values[start:start + n]:
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        out.append(digest.digest())
        start += n
    return out


def image_spans(ids: list[int], image_token: int, tokens_per_image: int | list[int]) -> list[tuple[int, int]]:
    """[start, end) of each image's placeholders in `ids`, in reading order (a tiled image's span
    holds the newlines between its runs too); `tokens_per_image`: a count for every image, or
    each image's count in order."""
    slots = [i for i, t in enumerate(ids) if t == image_token]
    if isinstance(tokens_per_image, int):
        if len(slots) % tokens_per_image:
            raise ValueError(f"{len(slots)} image placeholders is not a multiple of {tokens_per_image} per image")
        tokens_per_image = [tokens_per_image] * (len(slots) // tokens_per_image)
    if sum(tokens_per_image) != len(slots):
        raise ValueError(f"{len(slots)} image placeholders but the images take {sum(tokens_per_image)}")
    spans, k = [], 0
    for n in tokens_per_image:
        spans.append((slots[k], slots[k + n - 1] + 1))
        k += n
    return spans


@dataclass
class _Entry:
    ids: list[int]  # the tokens whose keys and values the cache holds, in order
    images: list[bytes]  # fingerprints of the images among them, in order
    cache: object  # a transformers Cache
    state: object  # the caller's key for the weights the cache was computed with


class PrefixCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._entry: _Entry | None = None

    def clear(self) -> None:
        with self._lock:
            self._entry = None

    def take(self, ids: list[int], spans: list[tuple[int, int]], images: list[bytes], state=None):
        """(reused length L, cache holding ids[:L] or None): the entry is removed either way.

        L < len(ids), so at least one token is left to prefill (its logits start the answer),
        and L never cuts an image's placeholder run. `state` must equal the one given to put
        (the weights the keys and values were computed with), else nothing is reused.
        """
        with self._lock:
            entry, self._entry = self._entry, None
        if entry is None or entry.state != state:
            return 0, None
        n = 0
        limit = min(len(ids) - 1, len(entry.ids))
        while n < limit and ids[n] == entry.ids[n]:
            n += 1
        # Same ids up to n, so the images starting before n are the k-th images of both.
        for k, (start, end) in enumerate(spans):
            if start >= n:
                break
            if k >= len(entry.images) or entry.images[k] != images[k] or end > n:
                n = start
                break
        if n == 0:
            return 0, None
        drop = entry.cache.get_seq_length() - n
        if drop > 0:
            try:
                # A negative count removes that many tokens in every transformers version (a
                # positive one meant "keep this many" before 5.x and is refused since).
                entry.cache.crop(-drop)
            except (RuntimeError, ValueError, NotImplementedError):
                return 0, None  # a cache that cannot be cut back (e.g. past a sliding window): prefill
        return n, entry.cache

    def put(self, ids: list[int], images: list[bytes], cache, state=None) -> None:
        """Keep `cache`, which holds exactly `ids` (the images among them fingerprinted by `images`)."""
        if cache.get_seq_length() != len(ids):
            raise ValueError(f"the cache holds {cache.get_seq_length()} tokens but {len(ids)} ids were given")
        with self._lock:
            self._entry = _Entry(list(ids), list(images), cache, state)

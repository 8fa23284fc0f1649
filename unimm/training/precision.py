"""The precision a training run computes in: the config's `mixed_precision` against the hardware.

`auto` is bf16 on a GPU and float32 on a CPU. An explicit `bf16` on a CPU pays only
where the CPU multiplies bf16 natively (AVX512-BF16 or AMX tiles); elsewhere (AVX2-only
CPUs, e.g. AMD EPYC before Zen 4) every bf16 matrix product is emulated, and a stage of
the default's recipe ran 22x slower than in float32 (BENCHMARKS.md). Such a run trains in
float32 instead, and says so, rather than taking a day for an hour's work
(UNIMM_ALLOW_EMULATED_BF16=1 keeps bf16 there, e.g. to reproduce a bf16 run's numbers).
"""
from __future__ import annotations

import os
import warnings

import torch

MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
# Set to 1 to train in bf16 on a CPU even where it is emulated (to reproduce a bf16 run's numbers exactly).
ALLOW_EMULATED = "UNIMM_ALLOW_EMULATED_BF16"
PRECISION_NAMES = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}  # as a run states it


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), as torch sees it."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_mixed_precision(value: str) -> None:
    """The one check of a config's mixed_precision, for every trainer's config."""
    if value not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {value!r}")


def resolve_mixed_precision(requested: str, cuda: bool, native_bf16: bool | None = None) -> str:
    """`requested` (a config's mixed_precision) -> the accelerate precision this machine trains in.

    bf16 on a CPU without native bf16 falls back to float32 with a warning naming the cause
    (`native_bf16` overrides the probe, for tests)."""
    check_mixed_precision(requested)
    if requested == "auto":
        return "bf16" if cuda else "no"
    if requested == "bf16" and not cuda:
        native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
        if not native and os.environ.get(ALLOW_EMULATED) != "1":
            warnings.warn("mixed_precision=bf16: this CPU has no native bf16 (no AVX512-BF16 or AMX), so bf16 "
                          "products would be emulated, ~20x slower than float32; training in float32 instead "
                          f"(mixed_precision=no, as `auto` chooses; {ALLOW_EMULATED}=1 keeps bf16)", stacklevel=2)
            return "no"
    return requested


def enlarge_kernel_cache(mixed_precision: str, cuda: bool, capacity: int = 16384) -> None:
    """bf16 matrix products on a CPU run oneDNN kernels, one built per new shape (~1 ms) and kept in
    a cache of 1,024 by default, which a stage's varying sequence lengths (x batch, x layer kind)
    overflow. oneDNN reads the capacity at its first use, so this runs before any bf16 product
    does; a value already in the environment wins."""
    if mixed_precision == "bf16" and not cuda:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))

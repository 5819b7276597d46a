"""Mixed precision (Flower-free): whether a device computes bf16 natively, and the autocast context of a run.

bf16 autocast wraps the forward pass only (the loss and the optimizer stay in fp32). On a CPU without native
bf16 (no AVX512-BF16 or AMX), oneDNN emulates it, which is slower than fp32: ``precision = "auto"`` then keeps
fp32. ``precision = "bf16"`` forces it anywhere (the same numerics on every machine, e.g. for a benchmark).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: str = "cpu") -> bool:
    """True where bf16 matrix arithmetic is native: a CUDA device that supports it, or a CPU with AMX-BF16 or
    AVX512-BF16."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def autocast(device: str, dtype):
    """``torch.autocast`` for ``dtype`` (None: a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)

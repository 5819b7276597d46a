"""Mixed precision and memory layout (Flower-free): whether a device computes bf16 natively, the autocast
context of a run, and the channels-last layout its convolutions run in.

bf16 autocast wraps the forward pass only (the loss and the optimizer stay in fp32). On a CPU without native
bf16 (no AVX512-BF16 or AMX), oneDNN emulates it, which is slower than fp32: ``precision = "auto"`` then keeps
fp32. ``precision = "bf16"`` forces it anywhere (the same numerics on every machine, e.g. for a benchmark).

``channels-last = true`` runs a step's convolutions on channels-last tensors (NDHWC), the layout oneDNN's
convolutions prefer: on the 2-core Intel kind, the bench-size training step drops from about 77 to 57 ms in fp32
and from 59 to 40 ms in bf16 (``python -m simulation.step_benchmark``, docs/performance.md). The model is
converted for the step and back afterwards, so weights, messages and files keep PyTorch's default layout.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
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


def _channels_last(ndim: int):
    import torch

    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(ndim)


def to_layout(x, channels_last: bool):
    """``x`` (a batch, N C D H W or N C H W) in channels-last memory when ``channels_last``; unchanged otherwise
    (or when it has another number of dimensions)."""
    fmt = _channels_last(x.ndim) if channels_last else None
    return x if fmt is None else x.contiguous(memory_format=fmt)


@contextlib.contextmanager
def layout(model, channels_last: bool, spatial_dims: int = 3) -> Iterator[None]:
    """``model``'s convolution weights in channels-last memory for the duration (back to the default, contiguous
    layout afterwards, so state dicts, messages and files never carry it). A no-op when not ``channels_last``."""
    fmt = _channels_last(spatial_dims + 2) if channels_last else None
    if fmt is None:
        yield
        return
    import torch

    model.to(memory_format=fmt)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)

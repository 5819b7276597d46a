"""One machine record for every study's pages: the CPU (with the vector units torch's kernels use), cores, memory,
the GPU, and the software versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (all jobs on CPU)"
    # the vector units torch's kernels use tell two machines of one name apart (an AVX2-only EPYC ran the
    # bench's jobs 3.7x slower than an earlier one of the same name)
    simd = torch.backends.cpu.get_cpu_capability()
    return (
        f"{cpu} ({simd}), {cores} cores, {gib:.0f} GiB RAM, {gpu}, {platform.system()} Python "
        f"{platform.python_version()}"
    )


def records_machine(records: list[dict]) -> str:
    """The machine(s) the recorded invocations ran on (each wall record names its own; the page is not
    relabelled by regenerating it elsewhere)."""
    walls = [r for r in records if r.get("kind") == "wall"]
    names = list(dict.fromkeys(r.get("machine", "not recorded (before 2026-11-25)") for r in walls))
    return "; ".join(names) if names else machine()


def software() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "monai", "flwr", "numpy"))


def commit() -> str:
    """The checkout's commit (with ``+changes`` when the working tree differs from it, new files that git does
    not ignore included); "" outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")

"""Training-step time of U-Harmony vs InstanceNorm per architecture, and parameter counts per role.

    python -m simulation.step_benchmark [--size 64] [--repeats 5] [--out runs/step_benchmark]

Prints a table and writes ``results.jsonl``. Same input, same seed, same optimizer for both norms;
the figure of merit is the ratio uharmony / instance of the median step time (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from uharmony import build_model, role_counts

ARCH_SIZES = {"dynunet": 64, "swinunetr": 64}


def step_times(
    arch: str, norm: str, size: int, repeats: int, device: str, seed: int = 0, order: int = 2
) -> list[float]:
    torch.manual_seed(seed)
    extra = {"order": order} if norm == "uharmony" else {}
    model = build_model(arch, 4, 3, 3, norm, **extra).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = DiceCELoss(sigmoid=True)
    x = torch.randn(2, 4, size, size, size, device=device)
    y = (torch.rand(2, 3, size, size, size, device=device) > 0.9).float()
    times = []
    for i in range(repeats + 1):  # first step is warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x, domain=1), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="cubic input size (multiple of 32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--archs", nargs="+", default=list(ARCH_SIZES))
    p.add_argument("--order", type=int, default=2, help="polynomial order K of UHarmonyNorm")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("runs/step_benchmark"))
    a = p.parse_args(argv)
    if a.size % 32 or a.size < 64:
        p.error(
            "--size must be a multiple of 32 and >= 64 (SwinUNETR downsamples 5 times; InstanceNorm "
            "cannot train on its 1-voxel bottleneck at 32)"
        )
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    machine = f"{platform.machine()} {torch.get_num_threads()} threads, device={a.device}"
    print(f"input 2x4x{a.size}^3, {a.repeats} timed steps after 1 warm-up; {machine}")
    for arch in a.archs:
        med = {}
        for norm in ("instance", "uharmony"):
            t = step_times(arch, norm, a.size, a.repeats, a.device, order=a.order)
            med[norm] = statistics.median(t)
            counts = role_counts(build_model(arch, 4, 3, 3, norm))
            rows.append(
                dict(
                    arch=arch,
                    norm=norm,
                    order=a.order if norm == "uharmony" else None,
                    size=a.size,
                    step_s_median=med[norm],
                    step_s=t,
                    roles=counts,
                    machine=machine,
                )
            )
            print(f"{arch:10s} {norm:9s} median step {med[norm]:.3f}s  roles {counts}", flush=True)
        ratio = med["uharmony"] / med["instance"]
        rows.append(dict(arch=arch, order=a.order, ratio_uharmony_over_instance=ratio, size=a.size, machine=machine))
        print(f"{arch:10s} ratio uharmony(K={a.order})/instance = {ratio:.3f} (goal <= 1.10)", flush=True)
    with open(a.out / "results.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {a.out / 'results.jsonl'}")
    return rows


if __name__ == "__main__":
    main()

"""Training-step benchmark: what one step costs and what fraction of the hardware it uses.

    python -m simulation.step_benchmark [--sizes main gpu] [--precisions fp32 bf16]
        [--layouts contiguous channels-last] [--norms uharmony instance] [--device cpu|cuda] [--out DIR]

Each configuration trains through the product's own step (``uharmony.model.training.train_steps``: the masked DiceCE,
AdamW, autocast and layout exactly as a site's round runs them, 25-step calls as in a round) on fixed random
batches of the size's patch, and reports per step: the median time, the FLOPs (torch's FLOP counter over one
forward and backward pass: convolutions and matrix products, which is where the arithmetic is), the achieved
GFLOP/s, voxels per second, and the fraction of the device's peak for that precision, stated two ways:

- ``peak``: the vendor arithmetic, per core (one compute thread, as a site trains): clock x FLOP per cycle, with
  2 FMA units x 16 fp32 lanes x 2 = 64 FLOP/cycle with AVX-512, 32 with AVX2+FMA; bf16: 1,024 FLOP/cycle with
  AMX (Intel's figure for AMX-BF16), twice the fp32 rate with AVX512-BF16, the fp32 rate otherwise (emulated);
  the clock is what /proc/cpuinfo reports (a virtual machine reports its nominal clock). No vendor figure on GPU.
- ``matmul``: what the same thread reaches on a large dense matrix product in that precision (the attainable
  rate; the GPU's figure too).

Writes ``results.jsonl`` (one record per configuration, with the machine) and ``step_benchmark.png`` under
``--out``; the ratio U-Harmony / InstanceNorm per precision and layout is printed as before (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from uharmony.federation.config import RunConfig
from uharmony.model.training import train_steps
from uharmony.precision import _cpu_flags
from uharmony.records.tracking import machine

# run-config entries of each size: "main" is the product's defaults (the main job and the benchmark's regime),
# "gpu" the benchmark's GPU size (simulation/bench/sizes.py)
SIZES = {"main": {}, "gpu": {"patch-size": 64, "filters": "32,64,128,256"}}
NORMS = {"uharmony": "uharmony", "instance": "fedavg"}  # norm -> the strategy whose model it is
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
LAYOUTS = {"contiguous": False, "channels-last": True}
DOMAINS = 5


def cpu_clock_ghz() -> float | None:
    """The clock /proc/cpuinfo reports (GHz), None when it does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return None


def vendor_peak(device: str, precision: str) -> tuple[float | None, str]:
    """One core's peak GFLOP/s for ``precision`` from the CPU's flags and clock, and how it was derived."""
    if device != "cpu":
        return None, "no vendor figure on this device"
    flags, ghz = _cpu_flags(), cpu_clock_ghz()
    if ghz is None:
        return None, "clock unknown"
    fp32 = 64 if "avx512f" in flags else (32 if {"avx2", "fma"} <= flags else 8)
    per_cycle, how = fp32, f"{fp32} fp32 FLOP/cycle"
    if precision == "bf16":
        if "amx_bf16" in flags:
            per_cycle, how = 1024, "1024 bf16 FLOP/cycle (AMX)"
        elif "avx512_bf16" in flags:
            per_cycle, how = 2 * fp32, f"{2 * fp32} bf16 FLOP/cycle (AVX512-BF16)"
        else:
            how = f"{fp32} FLOP/cycle (bf16 emulated at the fp32 rate)"
    return ghz * per_cycle, f"{ghz:.2f} GHz x {how}"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(device: str, precision: str, n: int | None = None, repeats: int = 5) -> float:
    """The best GFLOP/s of an n x n matrix product in ``precision`` on one thread (the attainable dense rate)."""
    n = n or (8192 if device.startswith("cuda") else 1024)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def config_for(size: str, norm: str, arch: str, order: int, patch: int | None) -> RunConfig:
    over = {**SIZES[size], "strategy": NORMS[norm], "arch": arch, "poly-order": order}
    if patch:
        over["patch-size"] = patch
    return RunConfig.from_flwr(over)


def make_batches(cfg: RunConfig, n: int, device: str, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    shape = (cfg.batch_size, 4, *(cfg.patch_size,) * 3)
    image = torch.randn(shape, generator=g)
    label = (torch.rand((cfg.batch_size, 3, *shape[2:]), generator=g) > 0.9).float()
    batch = {
        "image": image.to(device),
        "label": label.to(device),
        "present": torch.ones(cfg.batch_size, 4, device=device),
        "regions": torch.ones(cfg.batch_size, 3, device=device),
    }
    return [batch] * n


def step_flops(model, batch: dict, domain) -> int:
    """FLOPs of one forward and backward pass (torch's counter: convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        out = model(batch["image"], domain=domain, present=batch["present"])
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(cfg: RunConfig, precision: str, channels_last: bool, device: str, steps: int, repeats: int) -> dict:
    """Median seconds per step over ``repeats`` calls of ``steps`` steps each (after one warm-up call)."""
    torch.manual_seed(0)
    model = cfg.build_model(num_domains=DOMAINS).to(device)
    domain = 1 if model.gated else None
    batches = make_batches(cfg, steps, device)
    flops = step_flops(model, batches[0], domain)
    kw = dict(device=device, autocast_dtype=PRECISIONS[precision], channels_last=channels_last)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    train_steps(model, batches[:2], domain, 1e-3, **kw)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        train_steps(model, batches, domain, 1e-3, **kw)
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    step_s = statistics.median(times)
    voxels = cfg.batch_size * cfg.patch_size**3
    rec = dict(step_s=round(step_s, 5), step_s_all=[round(t, 5) for t in times], gflop_per_step=round(flops / 1e9, 3))
    rec.update(gflops=round(flops / step_s / 1e9, 2), voxels_per_s=round(voxels / step_s))
    if device.startswith("cuda"):
        rec["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        rec["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return rec


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["main"], choices=list(SIZES))
    p.add_argument("--patch", type=int, default=None, help="another cubic patch than the size's (e.g. 128)")
    p.add_argument("--arch", default="dynunet", choices=["dynunet", "swinunetr"])
    p.add_argument("--norms", nargs="+", default=["uharmony", "instance"], choices=list(NORMS))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--order", type=int, default=1, help="polynomial order K of UHarmonyNorm (the product's: 1)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (the median is reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("runs/step_benchmark"))
    a = p.parse_args(argv)
    if a.steps < 1 or a.repeats < 1:
        p.error("--steps and --repeats must be >= 1")
    if a.patch is not None and (a.patch < 16 or a.patch % 16):
        p.error("--patch must be a multiple of 16 and >= 16")
    return a


def main(argv=None) -> list[dict]:
    a = parse(argv)
    if a.device == "cpu":
        torch.set_num_threads(1)  # one compute thread, as each site trains
    a.out.mkdir(parents=True, exist_ok=True)
    where = machine()
    peaks = {}
    for prec in a.precisions:
        vendor, how = vendor_peak(a.device, prec)
        peaks[prec] = dict(vendor_gflops=vendor, vendor_how=how, matmul_gflops=round(matmul_gflops(a.device, prec), 1))
        print(f"{prec}: peak {vendor and round(vendor, 1)} GFLOP/s ({how}); matmul {peaks[prec]['matmul_gflops']}")
    rows = []
    for size in a.sizes:
        for norm in a.norms:
            cfg = config_for(size, norm, a.arch, a.order, a.patch)
            for prec in a.precisions:
                for layout in a.layouts:
                    rec = dict(size=size, arch=a.arch, norm=norm, precision=prec, layout=layout, device=a.device)
                    rec.update(patch=cfg.patch_size, filters=cfg.filters, batch=cfg.batch_size, order=a.order)
                    rec.update(measure(cfg, prec, LAYOUTS[layout], a.device, a.steps, a.repeats), **peaks[prec])
                    vendor = peaks[prec]["vendor_gflops"]
                    rec["fraction_of_peak"] = round(rec["gflops"] / vendor, 3) if vendor else None
                    rec["fraction_of_matmul"] = round(rec["gflops"] / peaks[prec]["matmul_gflops"], 3)
                    rec["machine"] = where
                    rows.append(rec)
                    with open(a.out / "results.jsonl", "a") as f:  # each record as it is made
                        f.write(json.dumps(rec) + "\n")
                    frac = f"{rec['fraction_of_peak']:.0%}" if vendor else "-"
                    print(
                        f"{size:5s} {norm:9s} {prec:5s} {layout:13s} {rec['step_s'] * 1000:8.1f} ms/step "
                        f"{rec['gflops']:7.1f} GFLOP/s  {frac:>4s} of peak  {rec['fraction_of_matmul']:.0%} of matmul"
                        f"  {rec['voxels_per_s']:,} voxels/s",
                        flush=True,
                    )
    print_ratios(rows)
    png = plot(rows, a.out / "step_benchmark.png", where)
    print(f"wrote {a.out / 'results.jsonl'} and {png}")
    return rows


def speedup_rows(rows: list[dict]) -> list[tuple[str, float]]:
    """Each configuration's speed-up over fp32 in the default layout (same size and norm)."""
    base = {
        (r["size"], r["norm"]): r["step_s"] for r in rows if (r["precision"], r["layout"]) == ("fp32", "contiguous")
    }
    out = []
    for r in rows:
        ref = base.get((r["size"], r["norm"]))
        if ref:
            out.append((f"{r['size']} {r['norm']} {r['precision']} {r['layout']}", ref / r["step_s"]))
    return out


def print_ratios(rows: list[dict]) -> None:
    for label, x in speedup_rows(rows):
        print(f"speed-up over fp32 contiguous: {label:40s} {x:.2f}x")
    by = {(r["size"], r["precision"], r["layout"], r["norm"]): r["step_s"] for r in rows}
    for (size, prec, layout, norm), t in by.items():
        if norm == "uharmony" and (size, prec, layout, "instance") in by:
            ratio = t / by[(size, prec, layout, "instance")]
            print(f"ratio uharmony / instance ({size}, {prec}, {layout}) = {ratio:.3f} (goal <= 1.10)")


def plot(rows: list[dict], path: Path, where: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(len(sizes), 1, figsize=(9, 1.2 + 0.5 * len(rows) / len(sizes)), squeeze=False)
    for ax, size in zip(axes[:, 0], sizes):
        sel = [r for r in rows if r["size"] == size]
        labels = [f"{r['norm']} {r['precision']} {r['layout']}" for r in sel]
        ms = [r["step_s"] * 1000 for r in sel]
        ax.barh(range(len(sel)), ms, color=["#4c72b0" if r["precision"] == "fp32" else "#dd8452" for r in sel])
        ax.set_yticks(range(len(sel)), labels)
        ax.invert_yaxis()
        for i, r in enumerate(sel):
            frac = f"{r['fraction_of_peak']:.0%} of peak, " if r["fraction_of_peak"] else ""
            text = f" {ms[i]:.0f} ms, {r['gflops']:.0f} GFLOP/s ({frac}{r['fraction_of_matmul']:.0%} of matmul)"
            ax.text(ms[i], i, text, va="center", fontsize=8)
        ax.set_xlim(0, max(ms) * 1.9)
        ax.set_xlabel("milliseconds per training step (lower is faster)")
        ax.set_title(f"size {size}: patch {sel[0]['patch']}³, batch {sel[0]['batch']}, filters {sel[0]['filters']}")
    gpu = where.get("gpu")
    fig.suptitle(f"Training step on {gpu or where.get('cpu')} ({rows[0]['device']}, one thread on CPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()

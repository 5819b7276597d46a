"""``uharmony-bench``: every method, the unseen site, ablations, costs and scale, then docs/results.md.

    uharmony-bench                 # default size (about an hour on 2 CPU cores), writes docs/results.md
    uharmony-bench --quick         # a few minutes; writes runs/bench-quick/results.md
    uharmony-bench --resume        # skip the jobs already in results.jsonl (after an interruption)

Work folder ``--out``: ``results.jsonl`` (one record per job, appended as jobs finish) and
``runs/<job>/metrics.jsonl``. The Markdown page (``--results-md``) gets a sibling folder of the same name
holding what it links to: ``results.jsonl``, ``dice_per_round.png``, ``overlays.png``, ``meta.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

from uharmony.files import append_jsonl, read_jsonl

from .sizes import ABLATIONS, METHODS, SIZES, UNSEEN_METHODS, BenchSize

PARTS = ("costs", "scale", "methods", "unseen", "ablations")
OVERLAY_METHODS = ("fedavg", "fedbn", "uharmony")


def plan(size: BenchSize, parts: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """(job key, call arguments) in the order they run; keys identify finished jobs on --resume."""
    jobs = []
    if "costs" in parts:
        jobs += [
            ("bytes", ("bytes",)),
            ("flower_ratio", ("flower_ratio",)),
            *((f"memory/{m}", ("memory", m)) for m in ("fedavg", "uharmony")),
        ]
    if "scale" in parts:
        jobs.append(("scale", ("scale",)))
    if "methods" in parts:
        jobs += [(f"method/{m}/seed{s}", ("method", m, s)) for s in size.seeds for m in METHODS]
    if "unseen" in parts:
        jobs += [(f"unseen/{m}/seed{s}", ("unseen", m, s)) for s in size.seeds for m in UNSEEN_METHODS]
    if "ablations" in parts:
        jobs += [(f"ablation/{n}/seed{s}", ("ablation", n, s)) for s in size.ablation_seeds for n in ABLATIONS]
    return jobs


def run_job(size: BenchSize, call: tuple, out: Path) -> dict:
    from . import jobs as J

    kind = call[0]
    if kind == "method":
        return J.method_job(
            size, call[1], call[2], out, overlay=call[2] == size.seeds[0] and call[1] in OVERLAY_METHODS
        )
    if kind == "unseen":
        return J.unseen_job(size, call[1], call[2], out)
    if kind == "ablation":
        return J.ablation_job(size, call[1], ABLATIONS[call[1]], call[2], out)
    if kind == "bytes":
        return J.bytes_job(size)
    if kind == "flower_ratio":
        return J.flower_ratio_job(size, out)
    if kind == "memory":
        return J.memory_job(size, call[1], out)
    if kind == "scale":
        return J.scale_job(size, out)
    raise ValueError(f"unknown job {call!r}")


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
    return f"{cpu}, {cores} cores, {gib:.0f} GiB RAM, {gpu}, {platform.system()} Python {platform.python_version()}"


def software() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "monai", "flwr", "numpy"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny size: a few minutes, every part exercised")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench or runs/bench-quick)")
    p.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help="Markdown page to write (default docs/results.md; with --quick, OUT/results.md)",
    )
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the size's seeds")
    p.add_argument("--resume", action="store_true", help="keep results.jsonl and skip jobs already recorded")
    a = p.parse_args(argv)
    size = SIZES["quick" if a.quick else "default"]
    if a.seeds:
        size = BenchSize(**{**size.to_dict(), "seeds": tuple(a.seeds), "ablation_seeds": (a.seeds[0],)})
    out = a.out or Path("runs/bench-quick" if a.quick else "runs/bench")
    md = a.results_md or (out / "results.md" if a.quick else Path("docs/results.md"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_HOME", str(out.resolve() / ".flwr"))
    warnings.filterwarnings("ignore")
    logging.getLogger("uharmony.server").setLevel(logging.ERROR)
    jsonl = out / "results.jsonl"
    if not a.resume and jsonl.exists():
        jsonl.unlink()
    records = read_jsonl(jsonl)
    done = {r["job"] for r in records}
    todo = [(k, c) for k, c in plan(size, tuple(a.parts)) if k not in done]
    t_start = time.time()
    print(f"[bench] size {size.name}: {len(todo)} jobs to run ({len(done)} already recorded) -> {out}", flush=True)
    for i, (key, call) in enumerate(todo, 1):
        t0 = time.time()
        print(f"[bench] job {i}/{len(todo)}: {key}", flush=True)
        rec = {"job": key, **run_job(size, call, out), "job_seconds": None}
        rec["job_seconds"] = round(time.time() - t0, 1)
        append_jsonl(jsonl, rec)
        records.append(rec)
        elapsed = time.time() - t_start
        eta = elapsed / i * (len(todo) - i)
        print(
            f"[bench] job {i}/{len(todo)} done in {rec['job_seconds']:.0f} s; elapsed {elapsed / 60:.1f} min, "
            f"about {eta / 60:.1f} min left",
            flush=True,
        )
    from .report import method_rows, plot_curves, plot_overlays
    from .results_md import write_results

    art = md.parent / md.stem  # artefacts the page links to (committed with docs/results.md)
    art.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(jsonl, art / "results.jsonl")
    rows = method_rows(records)
    curves = plot_curves(rows, art / "dice_per_round.png") if rows else None
    overlay = plot_overlays(
        {
            m if m != "uharmony" else "uharmony/gated": out / "overlays" / f"{m}-seed{size.seeds[0]}.npz"
            for m in OVERLAY_METHODS
        },
        art / "overlays.png",
    )
    wall = sum(r.get("job_seconds") or 0 for r in records) / 60
    meta = {
        "command": "uharmony-bench"
        + (" --quick" if a.quick else "")
        + (f" --seeds {' '.join(map(str, a.seeds))}" if a.seeds else ""),
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "software": software(),
        "size": size.to_dict(),
        "wall_minutes": wall,
    }
    (art / "meta.json").write_text(json.dumps(meta, indent=2))
    write_results(records, meta, md, curves, overlay)
    print(f"[bench] wrote {md} and {art}/ (results.jsonl, PNG plots, meta.json)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``uharmony-umsrep``: the UMS-Rep evidence, by one command (docs/umsrep.md).

    uharmony-umsrep                      # the default size on 2 CPU cores, writes docs/umsrep.md
    uharmony-umsrep --size quick --out runs/umsrep-quick --doc runs/umsrep-quick/umsrep.md   # minutes (tested)

Phase-P jobs run first (two side by side, one thread each), then the phase-F jobs that start from their
artifacts. Each finished job is appended to ``<out>/results.jsonl`` at once; a rerun skips the jobs found
there (``--fresh`` starts over), so an interrupted evidence run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from simulation.kit.machine import machine, software
from simulation.kit.pool import recorder, run_jobs
from uharmony.files import append_jsonl, read_jsonl

from .jobs import SIZES, plan, run_call, scan_noise, size_dict
from .report import write_report


def _run_call(size, call: list, out: Path) -> dict:
    return run_call(size, tuple(call), out)


def run_stage(size, calls: list[tuple], out: Path, results: Path, label: str) -> None:
    done = {tuple(r["job"]) for r in read_jsonl(results)}
    todo = [c for c in calls if tuple(c) not in done]
    print(f"[umsrep] {label}: {len(todo)} jobs to run ({len(calls) - len(todo)} already in {results})", flush=True)
    on_done = recorder(results, len(todo), f"umsrep {label}")
    run_jobs(size, [(list(c), list(c)) for c in todo], out, on_done, job=_run_call, label="umsrep")


def _earlier_seconds(out: Path) -> float:
    """Wall seconds of the earlier invocations that wrote this folder's results (a rerun adds its own)."""
    meta = out / "meta.json"
    return float(json.loads(meta.read_text()).get("seconds", 0)) if meta.exists() else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-umsrep", description=__doc__.split("\n")[0])
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="default",
        help="default: the recorded study; quick: minutes (tests); v2: design v2 (docs/method.md), hours",
    )
    p.add_argument("--out", type=Path, default=Path("runs/umsrep"))
    p.add_argument("--doc", type=Path, default=Path("docs/umsrep.md"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--fresh", action="store_true", help="forget earlier results in --out")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --out/results.jsonl")
    p.add_argument("--redo", default="", help="run again the jobs whose call contains this text (with --why)")
    p.add_argument("--why", default="", help="why they are redone: the report says it")
    a = p.parse_args(argv)
    if a.redo and not a.why:
        p.error("--redo needs --why (the report states every redone job and its reason)")
    size = SIZES[a.size]
    if a.workers:
        from dataclasses import replace

        size = replace(size, workers=a.workers)
    a.out.mkdir(parents=True, exist_ok=True)
    results = a.out / "results.jsonl"
    if a.fresh and results.exists():
        results.unlink()
    was = json.loads((a.out / "meta.json").read_text()).get("size", {}) if (a.out / "meta.json").exists() else {}
    if results.exists() and was and was.get("name") != size.name and not a.report_only:  # a job's key has no size
        p.error(f"{a.out} holds jobs of size {was.get('name')!r}, not {size.name!r}: use another --out (or --fresh)")
    redone = json.loads((a.out / "meta.json").read_text()).get("redone", []) if (a.out / "meta.json").exists() else []
    if a.redo:  # the old records move to results.superseded.jsonl; the report lists what was redone and why
        old = read_jsonl(results)
        gone = [r for r in old if a.redo in json.dumps(r["job"])]
        for r in gone:
            append_jsonl(a.out / "results.superseded.jsonl", r)
        results.write_text("".join(json.dumps(r) + "\n" for r in old if r not in gone))
        redone.append({"jobs": a.redo, "count": len(gone), "why": a.why})
    meta = {"size": size_dict(size), "machine": machine(), "software": software(), "command": " ".join(sys.argv)}
    t0 = time.time()
    if not a.report_only:
        pre, fine = plan(size)
        run_stage(size, pre, a.out, results, "phase P")
        run_stage(size, fine, a.out, results, "phase F")
        meta["seconds"] = round(time.time() - t0, 1) + (0 if a.fresh else _earlier_seconds(a.out))
        (a.out / "meta.json").write_text(json.dumps(meta, indent=1))
    elif (a.out / "meta.json").exists():
        meta = {**json.loads((a.out / "meta.json").read_text()), "command": meta["command"]}
    meta["scan-noise"] = scan_noise(size, size.seeds[0])
    meta["redone"] = redone
    (a.out / "meta.json").write_text(json.dumps(meta, indent=1))
    doc = write_report(read_jsonl(results), meta, a.doc, a.out)
    kept = a.doc.parent / "umsrep"  # the figures behind the report, kept beside it
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results, kept / "results.jsonl")
    (kept / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({"doc": str(doc), "results": str(results), "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

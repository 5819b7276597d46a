"""``uharmony-bench``: the S0/S2 study (methods, unseen site, ablations, costs, scale), then docs/results-s2.md.

    uharmony-bench                          # S0 and S2, every method, 5 seeds (about two hours on 2 CPU cores)
    uharmony-bench --resume --parts plateau unseen ablations kappa costs   # more parts into the same page
    uharmony-bench --quick                  # every part at a tiny size; writes runs/bench-quick/results.md
    uharmony-bench --size gpu               # the GPU size (--device cuda); writes runs/bench-gpu/results.md

Work folder ``--out``: ``results.jsonl`` (one record per job, appended as jobs finish) and
``runs/<job>/metrics.jsonl``. The Markdown page (``--results-md``) gets a sibling folder of the same name
holding what it links to: ``results.jsonl``, ``dice_per_round.png``, ``overlays.png``, ``meta.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

from simulation.kit.machine import machine, records_machine, software
from simulation.kit.pool import recorder, run_jobs
from uharmony.files import append_jsonl, read_jsonl

from .sizes import (
    ABLATIONS,
    KAPPA_METHODS,
    METHODS,
    SCENARIO_SITES,
    SIZES,
    UNSEEN_METHODS,
    UNSEEN_SCENARIO,
    BenchSize,
)

PARTS = ("methods", "unseen", "ablations", "kappa", "plateau", "costs", "scale")
DEFAULT_PARTS = ("methods",)  # the full comparison (S0 and S2, every method, every seed): about an hour
OVERLAY_METHODS = ("fedavg", "fedbn", "uharmony")
# the S0/S2 study's page (docs/results.md is the confirmatory comparison's, ``uharmony-evidence``) and its files
LEGACY_PAGE, LEGACY_ART = Path("docs/results-s2.md"), Path("docs/results")


def plan(size: BenchSize, parts: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """(job key, call arguments) in the order they run; keys identify finished jobs on --resume."""
    jobs = []
    if "methods" in parts:
        for scen, methods in METHODS.items():
            jobs += [(f"method/{scen}/{m}/seed{s}", ("method", scen, m, s)) for s in size.seeds for m in methods]
    if "unseen" in parts:
        scen = UNSEEN_SCENARIO
        jobs += [
            (f"unseen/{scen}/{m}/hold{p}/seed{s}", ("unseen", scen, m, s, p))
            for s in size.unseen_seeds
            for p in (size.unseen_sites if size.unseen_sites is not None else range(SCENARIO_SITES))
            for m in UNSEEN_METHODS
        ]
    if "ablations" in parts:
        jobs += [
            (f"ablation/{scen}/{n}/seed{s}", ("ablation", scen, n, s))
            for scen, variants in ABLATIONS.items()
            for s in size.ablation_seeds
            for n in variants
        ]
    if "kappa" in parts:
        jobs += [
            (f"kappa/{k:g}/{m}/seed{s}", ("kappa", k, m, s))
            for s in size.kappa_seeds
            for k in size.kappas
            for m in KAPPA_METHODS
        ]
    if "plateau" in parts:  # the doubling check of the regime: twice the rounds, seed 0
        jobs += [
            (f"plateau/{scen}/{m}/seed{size.seeds[0]}", ("plateau", scen, m, size.seeds[0]))
            for scen in size.plateau_scenarios
            for m in METHODS[scen]
        ]
    if "costs" in parts:
        jobs += [
            ("bytes", ("bytes",)),
            ("flower_ratio", ("flower_ratio",)),
            *((f"memory/{m}", ("memory", m)) for m in ("fedavg", "uharmony")),
        ]
    if "scale" in parts:
        jobs.append(("scale", ("scale",)))
    return jobs


def run_job(size: BenchSize, call: tuple, out: Path) -> dict:
    from . import jobs as J

    kind = call[0]
    if kind == "method":
        scen, method, seed = call[1:]
        overlay = seed == size.seeds[0] and method in OVERLAY_METHODS and scen == "S2"
        return J.method_job(size, scen, method, seed, out, overlay=overlay)
    if kind == "plateau":
        scen, method, seed = call[1:]
        return J.method_job(size, scen, method, seed, out, rounds=2 * size.rounds, kind="plateau")
    if kind == "kappa":
        kappa, method, seed = call[1:]
        return J.method_job(size, "S2", method, seed, out, kappa=kappa, kind="kappa")
    if kind == "unseen":
        return J.unseen_job(size, *call[1:], out)
    if kind == "ablation":
        scen, name, seed = call[1:]
        return J.ablation_job(size, name, ABLATIONS[scen][name], seed, out, scen)
    if kind == "bytes":
        return J.bytes_job(size)
    if kind == "flower_ratio":
        return J.flower_ratio_job(size, out)
    if kind == "memory":
        return J.memory_job(size, call[1], out)
    if kind == "scale":
        return J.scale_job(size, out)
    raise ValueError(f"unknown job {call!r}")


def wall_minutes(records: list[dict], reruns: bool = False) -> dict[str, float]:
    """Wall time per set of parts, summed over the invocations that ran them (a killed bench resumed with
    ``--resume`` ran its parts in several). An invocation with ``--rerun`` re-ran jobs whose first run is
    already counted: its minutes are left out (``reruns``: only those, e.g. for the page's note)."""
    walls: dict[str, float] = {}
    for r in records:
        if r["kind"] == "wall" and bool(r.get("rerun")) == reruns:
            key = "+".join(r["parts"])
            walls[key] = walls.get(key, 0.0) + r["minutes"]
    return {k: round(v, 1) for k, v in walls.items()}


def drop_for_rerun(jsonl: Path, prefixes: list[str]) -> list[dict]:
    """``--rerun``: remove the records whose job key starts with one of ``prefixes`` from ``jsonl`` (they
    go to ``replaced.jsonl`` beside it, kept); returns them."""
    kept, gone = [], []
    for r in read_jsonl(jsonl):
        rerun = r.get("kind") != "wall" and r["job"].startswith(tuple(prefixes))
        (gone if rerun else kept).append(r)
    if gone:
        with (jsonl.parent / "replaced.jsonl").open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in gone)
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return gone


def _command(r: dict) -> str:
    """The invocation that wrote a wall record."""
    cmd = "uharmony-bench"
    if tuple(r["parts"]) != DEFAULT_PARTS or r.get("rerun"):
        cmd += " --resume --parts " + " ".join(r["parts"])
    if r.get("rerun"):
        cmd += " --rerun " + " ".join(shlex.quote(x) for x in r["rerun"])
    return cmd


def check_same_size(path: Path, size: BenchSize, resume: bool) -> None:
    """--resume must not mix sizes in one page: the work folder records the size its jobs ran at."""
    now = json.loads(json.dumps(size.to_dict()))  # tuples as the file holds them: lists
    ignore = ("seeds", "workers")  # what --seeds / --workers may change between invocations of one size
    if resume and path.exists():
        # a key the folder's record lacks ran at that key's default (the key was added since)
        fields = dataclasses.fields(BenchSize)
        defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        was = {**json.loads(json.dumps(defaults)), **json.loads(path.read_text())}
        diff = sorted(k for k in now if k not in ignore and was.get(k) != now[k])
        if diff:
            raise SystemExit(
                f"{path}: the jobs recorded there ran at another size ({', '.join(f'{k}={was.get(k)!r}' for k in diff)}"
                f"; now {', '.join(f'{k}={now[k]!r}' for k in diff)}): use another --out or drop --resume"
            )
    path.write_text(json.dumps(now, indent=2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny size: a few minutes, every part exercised")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default | quick | gpu (--device cuda)")
    p.add_argument("--device", default=None, help="override the size's device (cpu, cuda)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench-SIZE)")
    p.add_argument(
        "--results-md",
        type=Path,
        default=None,
        help="Markdown page to write (default docs/results-s2.md; other sizes: OUT/results.md)",
    )
    p.add_argument(
        "--parts", nargs="+", choices=PARTS, default=None, help=f"default {' '.join(DEFAULT_PARTS)}; --quick: all"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the size's seeds")
    p.add_argument("--workers", type=int, default=None, help="jobs side by side (default: the size's)")
    p.add_argument(
        "--val-cases",
        type=int,
        default=None,
        help="held-out validation cases per site beyond the 25 %% split (training cases unchanged; another size)",
    )
    p.add_argument("--resume", action="store_true", help="keep results.jsonl and skip jobs already recorded")
    p.add_argument(
        "--rerun",
        nargs="+",
        default=None,
        metavar="PREFIX",
        help="with --resume: run again the recorded jobs whose key starts with PREFIX (e.g. method/S2/uharmony/) "
        "after a change to the method; the old records go to replaced.jsonl",
    )
    a = p.parse_args(argv)
    if a.rerun and not a.resume:
        p.error("--rerun needs --resume (without it every job runs anyway)")
    size = SIZES[a.size or ("quick" if a.quick else "default")]
    changes = {
        "device": a.device,
        "workers": a.workers,
        "seeds": tuple(a.seeds) if a.seeds else None,
        "val_cases": a.val_cases,
    }
    size = BenchSize(**{**size.to_dict(), **{k: v for k, v in changes.items() if v is not None}})
    parts = tuple(a.parts or (PARTS if size.name == "quick" else DEFAULT_PARTS))
    out = a.out or Path(f"runs/bench-{size.name}" if size.name != "default" else "runs/bench")
    md = a.results_md or (LEGACY_PAGE if size.name == "default" else out / "results.md")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_HOME", str(out.resolve() / ".flwr"))
    warnings.filterwarnings("ignore")
    logging.getLogger("uharmony.server").setLevel(logging.ERROR)
    jsonl = out / "results.jsonl"
    if not a.resume and jsonl.exists():
        jsonl.unlink()
    check_same_size(out / "size.json", size, a.resume)
    if a.rerun:
        print(f"[bench] --rerun: {len(drop_for_rerun(jsonl, a.rerun))} records set aside in replaced.jsonl", flush=True)
    records = read_jsonl(jsonl)
    done = {r["job"] for r in records}
    todo = [(k, c) for k, c in plan(size, parts) if k not in done]
    t_start = time.time()
    print(f"[bench] size {size.name}: {len(todo)} jobs to run ({len(done)} already recorded) -> {out}", flush=True)

    run_jobs(size, todo, out, recorder(jsonl, len(todo), "bench", records), job=run_job)
    if todo:
        wall_now = (time.time() - t_start) / 60
        wall = {"kind": "wall", "parts": list(parts), "minutes": wall_now, "machine": machine()}
        wall.update({"rerun": a.rerun} if a.rerun else {})
        append_jsonl(jsonl, {"job": f"wall/{len(records)}", **wall})
        records.append(wall)
    from .report import method_rows, plot_curves, plot_overlays
    from .results_md import write_results

    art = LEGACY_ART if md == LEGACY_PAGE else md.parent / md.stem  # artefacts the page links to
    art.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(jsonl, art / "results.jsonl")
    curves = {}
    for scen in METHODS:
        rows = method_rows(records, scen)
        if rows:
            curves[scen] = plot_curves(rows, art / f"dice_per_round_{scen}.png", title=f"scenario {scen}")
    overlay = plot_overlays(
        {
            m if m != "uharmony" else "uharmony/gated": out / "overlays" / f"S2-{m}-seed{size.seeds[0]}.npz"
            for m in OVERLAY_METHODS
        },
        art / "overlays.png",
    )
    meta = {
        "command": " ".join(["uharmony-bench", *(sys.argv[1:] if argv is None else argv)]),
        "commands": [_command(r) for r in records if r["kind"] == "wall"],  # every invocation, in order
        "date": dt.date.today().isoformat(),
        "machine": records_machine(records),
        "software": software(),
        "size": size.to_dict(),
        "wall_minutes": wall_minutes(records),
        "rerun_minutes": wall_minutes(records, reruns=True),
    }
    (art / "meta.json").write_text(json.dumps(meta, indent=2))
    write_results(records, meta, md, curves, overlay, art.name)
    print(f"[bench] wrote {md} and {art}/ (results.jsonl, PNG plots, meta.json)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

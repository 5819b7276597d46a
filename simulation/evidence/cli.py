"""``uharmony-evidence``: the pre-registered confirmatory comparison (docs/preregistration.md), then docs/results.md.

    uharmony-evidence --stage pilot-lr          # S3, every method at 3 learning rates, pilot seed 5
    uharmony-evidence --stage pilot-plateau pilot-parity   # 96 rounds at the chosen rates; fp32 vs bf16
    uharmony-evidence --stage confirm           # S3 and S0, every method, confirmatory seeds 100-109
    uharmony-evidence --stage side floor        # init-seed side study; the voxel-classifier floor
    uharmony-evidence --stage ablate-site       # S3 without the whole-tumour-only site (issue 30 item 4)
    uharmony-evidence --stage rotate-unseen     # each other site left out in turn, scored as unseen (item 5)
    uharmony-evidence --report                  # only rewrite the page from the records
    uharmony-evidence --quick --stage ...       # the same pipeline at toy size (tests)

Jobs are appended to ``--out``/results.jsonl as they finish (two side by side, one thread each) and a job
already recorded is not run again, so an interrupted stage resumes by running the command again. The page
(``docs/results.md``; ``--quick``: OUT/results.md) and its files (``docs/evidence/``) are rewritten from the
records after every invocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from uharmony.files import append_jsonl, read_jsonl

from .design import (
    ABLATED_METHODS,
    ABLATED_SITE,
    CONFIRM_SEEDS,
    DATASET_FREE,
    DEFAULT,
    LRS,
    METHOD_PILOT_SEEDS,
    METHODS,
    NAME,
    PILOT_SEEDS,
    QUICK,
    ROTATED_SITES,
    ROTATION_SEEDS,
    SIDE_DATA_SEED,
    SIDE_INIT_SEEDS,
    VARIANTS,
    Size,
)

STAGES = (
    "pilot-lr",
    "pilot-plateau",
    "pilot-parity",
    "confirm",
    "side",
    "floor",
    "pilot-method",
    "confirm-variant",
    "mechanism",
    "ablate-site",
    "rotate-unseen",
)
LR_SEED, PARITY_SEEDS, PARITY_METHODS = PILOT_SEEDS[0], (PILOT_SEEDS[0], PILOT_SEEDS[2]), ("fedavg", "uharmony")
FLOOR_SEEDS = CONFIRM_SEEDS[:3]


def choose_lr(records: list[dict], methods=METHODS["S3"]) -> dict[str, float]:
    """Each method's learning rate by the pre-registered rule: the highest dataset-free all-cells Dice on S3 at
    the pilot seed (ties: 5e-3). Refuses while a pilot job is missing."""
    from .estimands import estimands

    found = {(r["method"], r["lr"]): r for r in records if r.get("kind") == "train" and r["stage"] == "pilot-lr"}
    chosen = {}
    for m in methods:
        scores = {}
        for lr in LRS:
            if (m, lr) not in found:
                raise SystemExit(f"the learning-rate pilot has no job for {m} at {lr:g}: run --stage pilot-lr first")
            scores[lr] = estimands(found[(m, lr)]["cases"], DATASET_FREE[m], "S3")["all"]
        best = max(scores.values())
        chosen[m] = 5e-3 if scores.get(5e-3) == best else max(scores, key=scores.get)
    return chosen


def choose_variant(records: list[dict]) -> str | None:
    """Issue 30's pre-registered rule (docs/preregistration.md, "Amendment: method variants"): the variant with
    the highest mean S3 conflict Dice (dataset-free) over the method pilot's seeds, kept if it beats the default
    U-Harmony's mean by >= 1 DSC and its S0 all-cells Dice is not more than 1 DSC below the default's; else None.
    Refuses while a pilot job is missing."""
    from .estimands import estimands

    got = {
        (r["scenario"], r["method"], r["seed"]): r
        for r in records
        if r.get("kind") == "train" and r["stage"] == "pilot-method"
    }

    def value(scen, m, seed, est):
        if (scen, m, seed) not in got:
            raise SystemExit(f"the method pilot has no job {scen}/{m}/seed{seed}: run --stage pilot-method first")
        return estimands(got[(scen, m, seed)]["cases"], DATASET_FREE[m], scen)[est]

    def primary(m):
        return sum(value("S3", m, s, "conflict") for s in METHOD_PILOT_SEEDS) / len(METHOD_PILOT_SEEDS)

    best = max(VARIANTS, key=primary)
    s0 = METHOD_PILOT_SEEDS[0]
    better = primary(best) >= primary("uharmony") + 0.01
    safe = value("S0", best, s0, "all") >= value("S0", "uharmony", s0, "all") - 0.01
    return best if better and safe else None


def plan(stage: str, size: Size, seeds=None, records=()) -> list[tuple[str, tuple]]:
    """(job key, call) of a stage; the key identifies a finished job."""
    jobs = []
    if stage == "pilot-lr":
        jobs = [
            (f"pilot-lr/S3/{m}/seed{LR_SEED}/lr{lr:g}", ("train", stage, "S3", m, LR_SEED, {"lr": lr}))
            for lr in LRS
            for m in METHODS["S3"]
        ]
    elif stage == "pilot-plateau":
        r2 = 2 * size.rounds
        jobs = [
            (
                f"pilot-plateau/S3/{m}/seed{LR_SEED}/r{r2}",
                ("train", stage, "S3", m, LR_SEED, {"num-server-rounds": r2, "eval-every": r2}),
            )
            for m in METHODS["S3"]
        ]
    elif stage == "pilot-parity":
        jobs = [
            (f"pilot-parity/S3/{m}/seed{s}/{p}", ("train", stage, "S3", m, s, {"lr": 5e-3, "precision": p}))
            for s in PARITY_SEEDS
            for m in PARITY_METHODS
            for p in ("fp32", "bf16")
            if not (s == LR_SEED and p == size.precision)  # the lr pilot's job at 5e-3 is that pair's other half
        ]
    elif stage == "confirm":
        jobs = [
            (f"confirm/{scen}/{m}/seed{s}", ("train", stage, scen, m, s, {}))
            for s in seeds or CONFIRM_SEEDS
            for scen in ("S3", "S0")
            for m in METHODS[scen]
        ]
    elif stage == "side":
        jobs = [
            (
                f"side/S3/{m}/data{SIDE_DATA_SEED}/init{i}",
                ("train", stage, "S3", m, SIDE_DATA_SEED, {"init-seed": i}),
            )
            for i in SIDE_INIT_SEEDS
            for m in ("fedavg", "uharmony")
        ]
    elif stage == "ablate-site":  # S3 with one site's SuperNode absent for the whole run, paired with confirm
        jobs = [
            (
                f"ablate-site/S3/{m}/seed{s}/without{ABLATED_SITE}",
                ("train", stage, "S3", m, s, {}, (ABLATED_SITE,)),
            )
            for s in seeds or CONFIRM_SEEDS
            for m in ABLATED_METHODS
        ]
    elif stage == "rotate-unseen":  # every other site left out in turn (site 4's rotation: ablate-site's runs)
        jobs = [
            (f"rotate-unseen/S3/{m}/seed{s}/without{site}", ("train", stage, "S3", m, s, {}, (site,)))
            for s in seeds or ROTATION_SEEDS
            for site in ROTATED_SITES
            for m in ABLATED_METHODS
        ]
    elif stage == "floor":
        jobs = [(f"floor/S3/seed{s}", ("floor", stage, "S3", s)) for s in seeds or FLOOR_SEEDS]
    elif stage == "confirm-variant":  # the kept variant on the confirmatory seeds (none kept: nothing to run)
        kept = choose_variant(list(records))
        jobs = [
            (f"confirm/{scen}/{kept}/seed{s}", ("train", "confirm", scen, kept, s, {}))
            for s in seeds or CONFIRM_SEEDS
            for scen in ("S3", "S0")
            if kept
        ]
    elif stage == "pilot-method":  # issue 30's variants beside the default, on their own pilot seeds
        jobs = [
            (f"pilot-method/{scen}/{m}/seed{s}", ("train", stage, scen, m, s, {}))
            for s in METHOD_PILOT_SEEDS
            for scen in ("S3", "S0")
            for m in ("uharmony", *VARIANTS)
            if scen == "S3" or s == METHOD_PILOT_SEEDS[0]
        ]
    return jobs


def mechanism_plan(records: list[dict], seeds=None) -> list[tuple[str, tuple]]:
    """The inference-only mechanism checks of every U-Harmony run (default and variants) of the confirmatory
    seeds 100-104 and the method pilot."""
    wanted = set(seeds or CONFIRM_SEEDS[:5]) | set(METHOD_PILOT_SEEDS)
    return [
        (f"mechanism/{r['job']}", ("mechanism", "mechanism", r["job"]))
        for r in records
        if r.get("kind") == "train"
        and r["stage"] in ("confirm", "pilot-method")
        and r["seed"] in wanted
        and (r["method"] == "uharmony" or r["method"] in VARIANTS)
        and Path(r["run_dir"], "final_model.pt").exists()
    ]


def run_call(size: Size, call: tuple, out: Path) -> dict:
    """Run one planned call (in a worker process)."""
    kind, stage = call[0], call[1]
    if kind == "train":
        from .jobs import train_job

        scenario, method, seed, extra = call[2:6]
        without = call[6] if len(call) > 6 else ()  # sites absent for the whole run (stage ablate-site)
        return {"stage": stage, **train_job(size, scenario, method, seed, out, tag=stage, without=without, **extra)}
    if kind == "floor":
        from .floor import floor_job

        return {"stage": stage, **floor_job(size, call[2], call[3])}
    if kind == "mechanism":
        from uharmony.federation.config import RunConfig

        from .mechanism import mechanism_cases

        job = next(r for r in read_jsonl(out / "results.jsonl") if r["job"] == call[2])
        over = size.overrides(
            job["scenario"], job["method"], job["seed"], **job["extra"], **{"run-dir": job["run_dir"]}
        )
        over["lr"] = job["lr"]
        cases, seconds = mechanism_cases(Path(job["run_dir"]), RunConfig.from_flwr(over))
        keep = ("scenario", "method", "seed", "lr")
        return {
            "stage": stage,
            "kind": "mechanism",
            "of": call[2],
            **{k: job[k] for k in keep},
            "cases": cases,
            "seconds": seconds,
        }
    raise ValueError(f"unknown call {call!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-evidence", description=__doc__.splitlines()[0])
    p.add_argument("--stage", nargs="+", choices=STAGES, default=[], help="stages to run (in the order given)")
    p.add_argument("--quick", action="store_true", help="toy size: the whole pipeline in minutes (tests)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/evidence[-quick])")
    p.add_argument("--results-md", type=Path, default=None, help="page (default docs/results.md; --quick: OUT)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="confirm/floor: these seeds only (a part)")
    p.add_argument("--workers", type=int, default=None, help="jobs side by side (default 2)")
    p.add_argument("--device", default=None, help="cpu | cuda (default cpu; a GPU's jobs are recorded as such)")
    p.add_argument("--report", action="store_true", help="rewrite the page from the records only")
    a = p.parse_args(argv)
    size = QUICK if a.quick else DEFAULT
    if a.workers:
        size = replace(size, workers=a.workers)
    if a.device:
        size = replace(size, device=a.device)
    out = a.out or Path("runs/evidence-quick" if a.quick else "runs/evidence")
    md = a.results_md or (out / "results.md" if a.quick else Path("docs/results.md"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_HOME", str(out.resolve() / ".flwr"))
    warnings.filterwarnings("ignore")
    logging.getLogger("uharmony.server").setLevel(logging.ERROR)
    jsonl = out / "results.jsonl"
    _check_size(out / "size.json", size)
    records = read_jsonl(jsonl)
    from simulation.kit.machine import machine
    from simulation.kit.pool import recorder, run_jobs

    for stage in a.stage if not a.report else ():
        stage_size = size
        if stage != "pilot-lr":
            stage_size = replace(size, lrs=choose_lr(records, METHODS["S3"]))
            print(f"[evidence] learning rates (pilot seed {LR_SEED}): {stage_size.lrs}", flush=True)
        done = {r["job"] for r in records}
        planned = (
            mechanism_plan(records, a.seeds) if stage == "mechanism" else plan(stage, stage_size, a.seeds, records)
        )
        todo = [(k, c) for k, c in planned if k not in done]
        print(f"[evidence] {stage}: {len(todo)} jobs to run ({len(done)} recorded) -> {out}", flush=True)
        t0 = time.time()

        on_done = recorder(jsonl, len(todo), "evidence", records)
        run_jobs(stage_size, todo, out, on_done, job=run_call, label="evidence")
        if todo:
            wall = {"job": f"wall/{stage}/{len(records)}", "kind": "wall", "stage": stage, "jobs": len(todo)}
            wall.update(minutes=round((time.time() - t0) / 60, 2), machine=machine(), workers=stage_size.workers)
            append_jsonl(jsonl, wall)
            records.append(wall)
    from .report import write_page

    write_page(records, size, md, md.parent / ("evidence" if md == Path("docs/results.md") else md.stem))
    print(f"[evidence] wrote {md}", flush=True)
    return 0


# size keys added after work folders were made, with the value those folders' jobs ran at
_ADDED_KEYS = {"channels_last": False}


def _check_size(path: Path, size: Size) -> None:
    """One work folder, one size and one design."""
    now = {"design": NAME, **{k: v for k, v in size.to_dict().items() if k not in ("workers", "lrs", "device")}}
    if path.exists():
        was = json.loads(path.read_text())
        diff = sorted(k for k in now if was.get(k, _ADDED_KEYS.get(k)) != now[k])
        if diff:
            raise SystemExit(f"{path}: the jobs there ran at another size or design ({diff}): use another --out")
    path.write_text(json.dumps(now, indent=2))


if __name__ == "__main__":
    sys.exit(main())

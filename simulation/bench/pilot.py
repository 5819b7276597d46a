"""Pilots behind the default bench size (simulation.bench.sizes): FedAvg and U-Harmony alike, one setting varied.

    python -m simulation.bench.pilot                         # lr 2e-3, 5e-3, 1e-2 on S2, seeds 0 1, 20 x 25
    python -m simulation.bench.pilot --lrs 5e-3 --rounds 48 --steps 12 --scenarios S0 S2 --seeds 0
    python -m simulation.bench.pilot --vary residual-weight-decay=0.01,1 --references fedavg fedbn \
        --lrs 5e-3 --rounds 48 --eval-every 16 --scenarios S0 S2 --seeds 5 6

``--vary KEY=V1,V2``: U-Harmony at each value of one run-config setting (the bench's ablation job) instead of
FedAvg and U-Harmony per learning rate, beside the ``--references`` methods at the same size; pilot seeds are
kept apart from the comparison's (0-4), so a setting is not chosen on the seeds it is then judged on.

Each job is the default size's job (same data and initial weights) at one learning rate and one rounds ×
local-steps split, evaluated every ``--eval-every`` rounds; one JSON line per job is appended to ``--out``
(mean Dice over sites per evaluation, DSC points). Pilots fix the regime before the method comparison, the
same for every method.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from uharmony.federation.config import RunConfig, parse_assignments
from uharmony.files import append_jsonl

from .report import mean_over_sites
from .sizes import DEFAULT

METHODS = ("fedavg", "uharmony")


def pilot_job(
    method: str,
    seed: int,
    lr: float,
    work: Path,
    rounds: int = 20,
    steps: int = 25,
    scenario: str = "S2",
    every: int = 5,
) -> dict:
    """The bench's own method job (``jobs.method_job``) at the default size with ``lr`` and rounds × steps."""
    import torch

    from .jobs import method_job

    torch.set_num_threads(1)
    tag = f"{scenario}-{method}-seed{seed}-lr{lr:g}-r{rounds}x{steps}"
    size = replace(DEFAULT, lr=lr, rounds=rounds, local_steps=steps, eval_every=every)
    t0 = time.time()
    rec = method_job(size, scenario, method, seed, work / f"lr{lr:g}-r{rounds}x{steps}", kind="pilot")
    return {
        "job": tag,
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "lr": lr,
        "rounds": rounds,
        "local_steps": steps,
        "curve": [(c["round"], round(100 * mean_over_sites(c["gated"]), 1)) for c in rec["curve"]],
        "seconds": round(time.time() - t0),
    }


def _setting(key: str, text: str) -> dict:
    """``{key: value}`` with the value of the run-config field's own type (an unknown key or a bad value is refused
    here, before any job starts)."""
    return {key: getattr(RunConfig.from_flwr({key: text}), key.replace("-", "_"))}


def variant_job(
    method: str, setting: dict, seed: int, lr: float, work: Path, rounds: int, steps: int, scenario: str, every: int
) -> dict:
    """U-Harmony with one setting changed (``method`` "uharmony"), or a reference method as the bench runs it."""
    import torch

    from .jobs import ablation_job, method_job

    torch.set_num_threads(1)
    size = replace(DEFAULT, lr=lr, rounds=rounds, local_steps=steps, eval_every=every)
    name = ",".join(f"{k}={v}" for k, v in setting.items()) or method
    t0 = time.time()
    if setting:
        rec = ablation_job(size, name, setting, seed, work / f"vary-r{rounds}x{steps}", scenario)
    else:
        rec = method_job(size, scenario, method, seed, work / f"vary-r{rounds}x{steps}", kind="pilot")
    final = {m: round(100 * mean_over_sites(v), 1) for m, v in rec["final"].items() if isinstance(v, dict)}
    gate = rec.get("gate_accuracy") or {}
    return {
        "job": f"{scenario}-{name}-seed{seed}-lr{lr:g}-r{rounds}x{steps}",
        "scenario": scenario,
        "method": method,
        "setting": setting,
        "seed": seed,
        "lr": lr,
        "rounds": rounds,
        "local_steps": steps,
        "final": final,
        "gate_accuracy": round(sum(gate.values()) / len(gate), 3) if gate else None,
        "seconds": round(time.time() - t0),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.bench.pilot", description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--scenarios", nargs="+", default=["S2"])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--steps", type=int, default=25, help="local steps per round")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--work", type=Path, default=Path("runs/pilot"))
    p.add_argument("--out", type=Path, default=Path("docs/results/pilot.jsonl"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--vary", default=None, help="KEY=V1,V2,...: U-Harmony at each value of a run-config setting")
    p.add_argument("--references", nargs="*", default=[], help="with --vary: methods run beside it as they are")
    a = p.parse_args(argv)
    if a.vary:
        try:
            ((key, values),) = parse_assignments([a.vary]).items()
            runs = [("uharmony", _setting(key, v)) for v in values.split(",")] + [(m, {}) for m in a.references]
        except ValueError as exc:
            p.error(f"--vary KEY=V1,V2,...: {exc}")
        grid = [(m, st, s, lr, sc) for lr in a.lrs for sc in a.scenarios for s in a.seeds for m, st in runs]
        call = [(variant_job, (m, st, s, lr, a.work, a.rounds, a.steps, sc, a.eval_every)) for m, st, s, lr, sc in grid]
    else:
        grid = [(m, s, lr, sc) for lr in a.lrs for sc in a.scenarios for s in a.seeds for m in METHODS]
        call = [(pilot_job, (m, s, lr, a.work, a.rounds, a.steps, sc, a.eval_every)) for m, s, lr, sc in grid]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, *args) for fn, args in call]
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            append_jsonl(a.out, rec)
            print(f"[pilot] {i}/{len(grid)}: {json.dumps(rec)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

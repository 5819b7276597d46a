"""Pilots behind the default bench size (simulation.bench.sizes): FedAvg and U-Harmony alike, one setting varied.

    python -m simulation.bench.pilot                         # lr 2e-3, 5e-3, 1e-2 on S2, seeds 0 1, 20 x 25
    python -m simulation.bench.pilot --lrs 5e-3 --rounds 48 --steps 12 --scenarios S0 S2 --seeds 0

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
    a = p.parse_args(argv)
    grid = [(m, s, lr, sc) for lr in a.lrs for sc in a.scenarios for s in a.seeds for m in METHODS]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(pilot_job, m, s, lr, a.work, a.rounds, a.steps, sc, a.eval_every) for m, s, lr, sc in grid
        ]
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            append_jsonl(a.out, rec)
            print(f"[pilot] {i}/{len(grid)}: {json.dumps(rec)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

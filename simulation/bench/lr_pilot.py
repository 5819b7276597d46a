"""The learning-rate pilot behind the default bench size (simulation.bench.sizes): S2, FedAvg and U-Harmony alike.

    python -m simulation.bench.lr_pilot                      # lr 2e-3, 5e-3, 1e-2; seeds 0 1; about 25 min on 2 cores
    python -m simulation.bench.lr_pilot --lrs 5e-3 --seeds 0

Each job is the default size's S2 job (same data, initial weights, 20 rounds × 25 local steps, evaluated every
5 rounds) at one learning rate; one JSON line per job is appended to ``--out`` (mean Dice over sites per
evaluation, DSC points). Fixed before the method comparison and the same for every method.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from uharmony.files import append_jsonl

from .report import mean_over_sites
from .sizes import DEFAULT

METHODS = ("fedavg", "uharmony")


def pilot_job(method: str, seed: int, lr: float, work: Path, rounds: int = 20, steps: int = 25) -> dict:
    import torch

    from simulation.runner import run
    from uharmony.strategies import STRATEGIES

    from .jobs import run_curve

    torch.set_num_threads(1)
    tag = f"{method}-seed{seed}-lr{lr:g}-r{rounds}x{steps}"
    over = {
        **DEFAULT.base_overrides(seed, "S2"),
        "strategy": method,
        "run-dir": str(work / tag),
        "lr": lr,
        "num-server-rounds": rounds,
        "local-steps": steps,
        "eval-every": 5,
    }
    t0 = time.time()
    run(over)
    modes = ("oracle", "gated") if STRATEGIES[method].head == "gated" else ("gated",)
    curve, _ = run_curve(work / tag, modes)
    return {
        "job": tag,
        "method": method,
        "seed": seed,
        "lr": lr,
        "rounds": rounds,
        "local_steps": steps,
        "curve": [(c["round"], round(100 * mean_over_sites(c["gated"]), 1)) for c in curve],
        "seconds": round(time.time() - t0),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.bench.lr_pilot", description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--work", type=Path, default=Path("runs/lr-pilot"))
    p.add_argument("--out", type=Path, default=Path("docs/results/lr_pilot.jsonl"))
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    grid = [(m, s, lr) for lr in a.lrs for s in a.seeds for m in METHODS]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx) as pool:
        futures = [pool.submit(pilot_job, m, s, lr, a.work) for m, s, lr in grid]
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            append_jsonl(a.out, rec)
            print(f"[lr-pilot] {i}/{len(grid)}: {json.dumps(rec)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

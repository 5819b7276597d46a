"""The design's jobs (``design``): each returns one JSON-ready record for the study's ``results.jsonl``.

Training goes through the product (``simulation.runner.run``, in-process transport); every figure is read
back from the run folder. A training job's record holds every validation case's scores under each protocol
(``cases``: site, mode, Dice per region, truth size, lesion-wise Dice), so every estimand is computed from
the records alone (``estimands``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from simulation.embedded import ensure_federation
from simulation.kit.runs import per_case_records, run_curve, run_gate_accuracy
from simulation.runner import run
from uharmony.data import load_federation
from uharmony.federation.config import RunConfig
from uharmony.federation.strategies import STRATEGIES

from .design import Size
from .protocols import protocol_cases, site_local


def protocol_modes(cfg: RunConfig) -> dict[str, str]:
    """The run's own evaluation modes renamed for the protocol (``design.DATASET_FREE``'s vocabulary)."""
    gated, local = STRATEGIES[cfg.strategy].head == "gated", site_local(cfg)
    if not gated:
        return {"oracle": "own" if local else "shared"}
    return {"oracle": "oracle", "gated": "own-gated" if local else "shared"}


def split_sites(cfg: RunConfig, without: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """(present, absent) partition ids of the federation when the sites named ``without`` stay away."""
    names = [s.name for s in load_federation(ensure_federation(cfg), seed=cfg.federation_seed).sites]
    unknown = sorted(set(without) - set(names))
    if unknown:
        raise ValueError(f"no site {', '.join(unknown)} in the federation (sites: {names})")
    away = [name in without for name in names]
    return [i for i, a in enumerate(away) if not a], [i for i, a in enumerate(away) if a]


def train_job(
    size: Size, scenario: str, method: str, seed: int, out: Path, tag: str = "", without: tuple = (), **extra
) -> dict:
    """One method on one scenario and seed; ``extra``: run-config changes (a pilot's lr, an init seed, ...);
    ``without``: sites whose SuperNode is absent for the whole run (their scans are still scored)."""
    name = f"{tag or 'job'}-{scenario}-{method}-seed{seed}" + "".join(f"-{k}{v}" for k, v in sorted(extra.items()))
    name += "".join(f"-without{s}" for s in without)
    run_dir = out / "runs" / name.replace("/", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    over = size.overrides(scenario, method, seed, **extra, **{"run-dir": str(run_dir)})
    t0 = time.time()
    present, absent = split_sites(RunConfig.from_flwr(over), without) if without else (None, [])
    run(over, node_configs=None if present is None else [{"partition-id": i} for i in present])
    trained = time.time() - t0
    cfg = RunConfig.from_flwr(over)
    rename = protocol_modes(cfg)
    cases = [{**r, "mode": rename[r["mode"]]} for r in per_case_records(run_dir) if r["mode"] in rename]
    t1 = time.time()
    extra_cases, summary = protocol_cases(run_dir, cfg)
    if absent:  # the absent sites' scans as an unseen site's (issue 30 item 5)
        from .unseen import unseen_cases

        extra_cases += unseen_cases(run_dir, cfg, absent)
    curve, seconds = run_curve(run_dir, ("gated",))
    return {
        "kind": "train",
        "scenario": scenario,
        "method": method,
        "seed": seed,
        "lr": cfg.lr,
        "rounds": cfg.num_server_rounds,
        "precision": cfg.precision,
        "device": cfg.torch_device,
        "data_seed": cfg.federation_seed,
        "init_seed": cfg.weights_seed,
        "extra": extra,
        "without": list(without),
        "cases": cases + extra_cases,
        "router_accuracy": summary.get("router_accuracy"),
        "gate_accuracy": run_gate_accuracy(run_dir),
        "final_gated": curve[-1]["gated"] if curve else None,
        "train_seconds": round(trained, 1),
        "round_seconds": [round(s, 2) for s in seconds],
        "protocol_seconds": round(time.time() - t1, 1),
        "run_dir": str(run_dir),
    }

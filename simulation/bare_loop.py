"""The same federated rounds without Flower's runtime: one process, sites trained one after another.

Uses exactly the library code of a Flower run (SiteRound for the site's work, RoleAwareFedAvg for the
aggregation), so ``flower round time / bare round time`` measures the runtime's overhead, and it runs
on a GPU machine (``--device cuda``) for quick sweeps.

    python -m simulation.bare_loop --rounds 10 --set lr=0.002 --run-dir runs/bare
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from client.data import federation_root
from client.site_round import SiteRound
from server.run_log import RunLog
from server.server_app import initial_model
from server.strategy import RoleAwareFedAvg
from simulation.datasets import load_federation
from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, to_numpy


def bare_run(overrides: dict, device: str = "cpu", progress: bool = True) -> dict:
    cfg = RunConfig.from_flwr({k.replace("_", "-"): v for k, v in overrides.items()})
    if cfg.strategy == "centralized":
        raise ValueError("bare loop: use the Flower runner for strategy=centralized")
    model, _ = initial_model(cfg)
    roles = ModelRoles(model, cfg.strategy)
    strategy = RoleAwareFedAvg(roles, to_numpy(model.state_dict(), roles.global_keys()),
                               update_norm_factor=cfg.update_norm_factor)
    fed = load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None, seed=cfg.seed)
    spec = json.dumps(model.spec)
    saved: dict[int, dict] = {}
    runlog = RunLog(cfg.run_dir)
    rounds, summary = [], {}
    for rnd in range(1, cfg.num_server_rounds + 1):
        t0 = time.time()
        updates = []
        for pid in range(len(fed.sites)):
            job = SiteRound({"partition-id": pid}, cfg, spec, cfg.strategy, saved.get(pid), device=device)
            job.load(strategy.global_state)
            arrays, metrics, saved[pid] = job.train(rnd, cfg.lr, cfg.local_steps,
                                                    cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0)
            updates.append((pid, arrays, float(metrics[P.NUM_EXAMPLES]), metrics,
                            {P.SITE_ID: job.site.name, P.DOMAIN_ID: job.site.domain}))
        strategy.aggregate_updates(rnd, updates)
        train_s = time.time() - t0
        per_site = {}
        if rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
            for pid in range(len(fed.sites)):
                job = SiteRound({"partition-id": pid}, cfg, spec, cfg.strategy, saved.get(pid), device=device)
                job.load(strategy.global_state)
                per_site[job.site.name] = job.evaluate()
            summary = runlog.evaluation(rnd, cfg.strategy, per_site)
        rounds.append({"round": rnd, "train_seconds": train_s, "seconds": time.time() - t0, "summary": summary})
        runlog.write({"round": rnd, "event": "train", "strategy": cfg.strategy, "bare": True,
                      "seconds": round(train_s, 2), "sites": [u[4][P.SITE_ID] for u in updates]})
        if progress:
            print(f"[bare] round {rnd}/{cfg.num_server_rounds} train {train_s:.1f}s | "
                  + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
    runlog.write({"event": "done", "rounds": cfg.num_server_rounds, "final-mean-dice": summary})
    runlog.plot()
    return {"run_dir": cfg.run_dir, "rounds": rounds, "summary": summary}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Federated rounds without the Flower runtime")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--run-dir", default="runs/bare")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    overrides = {"run-dir": a.run_dir}
    if a.rounds:
        overrides["num-server-rounds"] = a.rounds
    for item in a.set:
        k, _, v = item.partition("=")
        overrides[k] = v
    out = bare_run(overrides, a.device)
    Path(a.run_dir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(out["summary"]))


if __name__ == "__main__":
    main()

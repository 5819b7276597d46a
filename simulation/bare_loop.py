"""The same federated rounds without Flower's runtime: one process, sites trained one after another.

Uses exactly the library code of a Flower run (SiteRound for the site's work, RoleAwareFedAvg for the
aggregation, the server's pooled round for ``strategy=centralized``), so ``flower round time / bare
round time`` measures the runtime's overhead; the benchmark (``uharmony-bench``) trains through it,
and it runs on a GPU machine (``--device cuda``) for quick sweeps.

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
from server.server_app import _centralized_round, initial_model
from server.strategy import RoleAwareFedAvg
from simulation.datasets import SiteData, load_federation
from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, to_numpy


def _centralized_train(cfg: RunConfig, model, roles, strategy, pooled: SiteData, rnd: int, num_sites: int) -> None:
    model.load_state_dict({**model.state_dict(), **{k: torch.as_tensor(v) for k, v in strategy.global_state.items()}})
    _centralized_round(cfg, model, pooled, rnd, num_sites)
    model.cpu()
    strategy.global_state = to_numpy(model.state_dict(), roles.global_keys())


def bare_run(overrides: dict, device: str = "cpu", progress: bool = True, train_sites: list[int] | None = None,
             label: str = "bare") -> dict:
    """Run the rounds; returns run_dir, per-round records (with per-site metrics on evaluation rounds),
    the final summary, the server's ``global_state`` and each site's kept ``local`` state.

    ``train_sites``: partition ids that take part (default: all); the others are neither trained nor
    evaluated (leave-one-site-out studies evaluate them afterwards).
    """
    cfg = RunConfig.from_flwr({k.replace("_", "-"): v for k, v in overrides.items()})
    model, _ = initial_model(cfg)
    central = cfg.strategy == "centralized"
    roles = ModelRoles(model, "fedavg" if central else cfg.strategy)
    strategy = RoleAwareFedAvg(roles, to_numpy(model.state_dict(), roles.global_keys()),
                               update_norm_factor=cfg.update_norm_factor)
    fed = load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None, seed=cfg.seed)
    pids = list(range(len(fed.sites))) if train_sites is None else sorted(train_sites)
    if not pids or not all(0 <= p < len(fed.sites) for p in pids):
        raise ValueError(f"bare loop: train_sites {train_sites} must be partition ids in [0, {len(fed.sites)})")
    pooled = None
    if central:
        from simulation.datasets.federation import Federation

        part = Federation(fed.kind, fed.root, [fed.sites[p] for p in pids])
        pooled = SiteData(part.pooled(), cfg.spacing, cfg.patch_size)
    spec = json.dumps(model.spec)
    eval_strategy = "fedavg" if central else cfg.strategy
    saved: dict[int, dict] = {}
    runlog = RunLog(cfg.run_dir)
    rounds, summary = [], {}
    for rnd in range(1, cfg.num_server_rounds + 1):
        t0 = time.time()
        updates = []
        if central:
            _centralized_train(cfg, model, roles, strategy, pooled, rnd, len(pids))
        else:
            for pid in pids:
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
            for pid in pids:
                job = SiteRound({"partition-id": pid}, cfg, spec, eval_strategy, saved.get(pid), device=device)
                job.load(strategy.global_state)
                per_site[job.site.name] = job.evaluate()
            summary = runlog.evaluation(rnd, cfg.strategy, per_site)
        rounds.append({"round": rnd, "train_seconds": train_s, "seconds": time.time() - t0, "summary": summary,
                       "per_site": per_site})
        runlog.write({"round": rnd, "event": "train", "strategy": cfg.strategy, "bare": True,
                      "seconds": round(train_s, 2), "sites": [u[4][P.SITE_ID] for u in updates] or ["pooled"]})
        if progress:
            print(f"[{label}] round {rnd}/{cfg.num_server_rounds} train {train_s:.1f}s | "
                  + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()), flush=True)
    runlog.write({"event": "done", "rounds": cfg.num_server_rounds, "final-mean-dice": summary})
    runlog.plot()
    return {"run_dir": cfg.run_dir, "rounds": rounds, "summary": summary, "config": cfg, "spec": spec,
            "global_state": strategy.global_state, "local": saved, "train_sites": pids}


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

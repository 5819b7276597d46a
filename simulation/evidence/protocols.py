"""The dataset-free protocol (docs/preregistration.md): every method scored on every site's validation scans
without that site's own state, and the site-aware numbers apart.

After a run, from its final model and its simulated sites' saved site-local entries (inference only):

- a method with nothing site-local (FedAvg, FedProx, centralized, centralized U-Harmony) is dataset-free as
  trained: its run's own evaluation (mode ``gated``) is its number;
- a method with site-local entries (FedBN's normalization layers, U-Harmony's statistics, local models) is
  scored ``routed``: each scan gets the entries of the training site nearest by acquisition fingerprint
  (``uharmony.model.routing``, the information U-Harmony's gate has), and ``mean``: the mean of the sites' entries
  (not for local models: averaging separately trained models means nothing). U-Harmony's head uses its own
  scan gate throughout;
- ``own``: each site's own entries, the site-aware number (the run's own evaluation; U-Harmony's oracle
  expert is its mode ``oracle``).

A scan routed to its own site is scored once: its routed record is its own-state record.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from simulation.kit.runs import mean_local_state, per_case_records, run_id_of, site_view
from uharmony.data import federation_root, load_federation
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles
from uharmony.federation.site_state import load_local_state
from uharmony.federation.strategies import STRATEGIES
from uharmony.model.roles import LOCAL
from uharmony.model.routing import FingerprintRouter
from uharmony.model.training import evaluate_cases


def site_local(cfg: RunConfig) -> bool:
    """Whether a strategy keeps entries at the site that inference needs (the protocol's routed/mean cases)."""
    if STRATEGIES[cfg.strategy].pooled:
        return False
    return bool(ModelRoles(cfg.build_model(1), cfg.strategy).keys(LOCAL))


def protocol_cases(run_dir: Path, cfg: RunConfig) -> tuple[list[dict], dict]:
    """Per-case records of the ``routed`` and ``mean`` protocols (each with ``site``, ``mode``, ``route``) and a
    summary (router accuracy per site, seconds). Empty for a method with nothing site-local."""
    if not site_local(cfg):
        return [], {}
    t0 = time.time()
    sites = load_federation(federation_root(cfg), seed=cfg.federation_seed).sites
    run_id = run_id_of(run_dir)
    jobs = {pid: site_view(run_dir, pid, cfg) for pid in range(len(sites))}
    final = torch.load(run_dir / "final_model.pt", weights_only=True)["state"]
    local = {}
    for pid, job in jobs.items():
        saved = load_local_state(job.state_dir)
        if saved and saved[1].get("run") == run_id:
            local[pid] = saved[0]
    router = FingerprintRouter.fit({pid: jobs[pid].data.train for pid in local})
    # the run's own evaluation with the site's own entries and the dataset-free head (a plain head has one mode)
    mode = "gated" if jobs[0].model.gated else "oracle"
    own = {(r["site"], r["case"]): r for r in per_case_records(run_dir) if r["mode"] == mode}
    separate_models = not jobs[0].roles.global_keys()  # local training: nothing shared to average around
    mean = None if separate_models else mean_local_state(run_dir)
    records, routing = [], {}
    for pid, job in jobs.items():
        name = job.site.name
        routes = [router.route(item) for item in job.data.val]
        routing[name] = sum(r == pid for r in routes) / max(len(routes), 1)
        for target in sorted(set(routes)):
            idx = [i for i, r in enumerate(routes) if r == target]
            if target == pid:
                got = [dict(own[(name, str(job.data.val[i]["case_id"]))]) for i in idx]
            else:
                got = _score(job, final, local[target], [job.data.val[i] for i in idx], cfg)
            records += [{**r, "site": name, "mode": "routed", "route": sites[target].name} for r in got]
        if mean is not None:
            records += [{**r, "site": name, "mode": "mean"} for r in _score(job, final, mean, job.data.val, cfg)]
    for r in records:
        r.pop("run", None)
        r.pop("round", None)
    return records, {"router_accuracy": routing, "protocol_seconds": round(time.time() - t0, 1)}


def _score(job, final: dict, saved: dict, items: list[dict], cfg: RunConfig) -> list[dict]:
    """Per-case records of ``items`` under the final model with ``saved`` as the site-local entries (the
    dataset-free head: U-Harmony's scan gate)."""
    job.saved = saved
    job.load(final)
    cases: list[dict] = []
    evaluate_cases(
        job.model, items, None, cfg.patch_size, job.device, per_case=cases, autocast_dtype=cfg.autocast_dtype
    )
    return cases

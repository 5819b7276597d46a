"""Does U-Harmony's restoration carry site information? Inference-only checks of a finished U-Harmony run
(issue 30; docs/method.md "Mechanism"), each scored per case like the protocols:

- ``swap``: the site's own expert, but the next site's site-local entries (statistics, and coefficients where
  they are site-local): what a restoration that carries site information must lose;
- ``mean-stats``: the own expert with the mean of the sites' site-local entries;
- ``gain0``: the own expert and entries, the restoration's gain g set to 0 (no statistic re-enters);
- ``shared``: the site's own entries, no expert (the residual head's shared answer): what a misrouted or
  unseen scan would get.

Each is compared with the run's own ``oracle`` records (own expert, own entries).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from simulation.kit.runs import mean_local_state, run_id_of, site_view
from uharmony.data import federation_root, load_federation
from uharmony.federation.config import RunConfig
from uharmony.federation.site_state import load_local_state
from uharmony.model.norm import UHarmonyNorm
from uharmony.model.training import evaluate_cases

CHECKS = ("swap", "mean-stats", "gain0", "shared")


def mechanism_cases(run_dir: Path, cfg: RunConfig) -> tuple[list[dict], float]:
    """Per-case records of every check (mode = the check's name) over every site's validation cases."""
    t0 = time.time()
    sites = load_federation(federation_root(cfg), seed=cfg.federation_seed).sites
    run_id = run_id_of(run_dir)
    final = torch.load(run_dir / "final_model.pt", weights_only=True)["state"]
    jobs = {pid: site_view(run_dir, pid, cfg) for pid in range(len(sites))}
    local = {}
    for pid, job in jobs.items():
        saved = load_local_state(job.state_dir)
        if saved and saved[1].get("run") == run_id:
            local[pid] = saved[0]
    mean = mean_local_state(run_dir)
    records = []
    for pid, job in jobs.items():
        if pid not in local or not job.data.val:
            continue
        other = (pid + 1) % len(sites)
        domain, items = job.site.domain, job.data.val
        runs = {
            "swap": (local.get(other, local[pid]), domain, None),
            "mean-stats": (mean, domain, None),
            "gain0": (local[pid], domain, "gain0"),
            "shared": (local[pid], None, "shared"),
        }
        for check, (saved, dom, change) in runs.items():
            job.saved = saved
            job.load(final)
            weights = None
            if change == "gain0":
                with torch.no_grad():
                    for m in job.model.modules():
                        if isinstance(m, UHarmonyNorm):
                            m.restore_gain.zero_()
            if change == "shared":  # every expert weighted 0: the residual head's shared answer alone
                weights = [torch.zeros(1, job.model.head.num_domains) for _ in items]
            cases: list[dict] = []
            evaluate_cases(
                job.model,
                items,
                dom,
                cfg.patch_size,
                job.device,
                gate_weights=weights,
                per_case=cases,
                autocast_dtype=cfg.autocast_dtype,
            )
            records += [{**r, "site": job.site.name, "mode": check} for r in cases]
    return records, round(time.time() - t0, 1)

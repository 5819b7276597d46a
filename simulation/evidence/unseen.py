"""The sites a run went without (``--stage ablate-site``), scored as an unseen site would be: issue 30 item 5,
registered in docs/preregistration.md ("an unseen site") before it ran. Inference only, after training.

Each absent site's validation scans, dataset-free (the scan gate decides; no label, no site identity):

- ``unseen``: the final model as it leaves the federation: FedAvg's global model (what a new hospital gets);
  U-Harmony with the statistics it ships, the initial values (no product path uses them as they are: this is
  ``simulation.bench``'s "uncalibrated" unseen-site arm, kept for comparison);
- ``unseen-per-scan`` (U-Harmony): each scan standardized with statistics estimated on that scan alone, what
  ``uharmony-segment`` and a MONAI bundle do when the site has not calibrated (the product's "no calibration");
- ``unseen-calibrated`` (U-Harmony): the site's statistics first estimated from its own unlabeled training scans
  (``uharmony.model.inference.estimate_site_statistics``, what ``uharmony-calibrate`` does: no label, no
  gradient, weights untouched).

Calibration runs in fp32 (as the product's does), while the training sites' statistics were accumulated in
the run's training precision.

``protocols.protocol_cases`` adds the absent site's ``routed`` (the nearest training site's statistics) and
``mean`` (the training sites' mean) records beside these.
"""

from __future__ import annotations

from pathlib import Path

from simulation.kit.runs import site_view
from uharmony.federation.config import RunConfig
from uharmony.model.inference import estimate_site_statistics
from uharmony.model.norm import UHarmonyNorm
from uharmony.model.training import evaluate_cases


def unseen_cases(run_dir: Path, cfg: RunConfig, absent: list[int]) -> list[dict]:
    """Per-case records (``site``, ``mode``) of each absent partition's validation scans."""
    records: list[dict] = []
    for pid in absent:
        job = site_view(run_dir, pid, cfg)
        name = job.site.name
        records += [{**r, "site": name, "mode": "unseen"} for r in _cases(job, cfg)]
        if any(isinstance(m, UHarmonyNorm) for m in job.model.modules()):
            for item in job.data.val:  # each scan's own statistics (estimation starts afresh every time)
                estimate_site_statistics(
                    job.model, [(item["image"], item["present"])], cfg.patch_size, device=job.device
                )
                records += [{**r, "site": name, "mode": "unseen-per-scan"} for r in _cases(job, cfg, [item])]
            scans = [(item["image"], item["present"]) for item in job.data.train]
            estimate_site_statistics(job.model, scans, cfg.patch_size, device=job.device)
            records += [{**r, "site": name, "mode": "unseen-calibrated"} for r in _cases(job, cfg)]
    for r in records:
        r.pop("run", None)
        r.pop("round", None)
    return records


def _cases(job, cfg: RunConfig, items: list[dict] | None = None) -> list[dict]:
    """Per-case records of ``items`` (default: the site's validation scans) under the job's model as it is."""
    cases: list[dict] = []
    items = job.data.val if items is None else items
    evaluate_cases(
        job.model, items, None, cfg.patch_size, job.device, per_case=cases, autocast_dtype=cfg.autocast_dtype
    )
    return cases

"""What a finished run folder says, for every study: its Dice curve, the gate's accuracy, the per-case records
its sites kept, and a site's view of its final model (the global entries with the site's own saved ones)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from uharmony.files import read_jsonl
from uharmony.records.runlog import RunLog
from uharmony.vocabulary import REGIONS

if TYPE_CHECKING:  # the site's view needs torch and the model: loaded by the functions that use them
    from uharmony.federation.config import RunConfig
    from uharmony.federation.site_round import SiteRound


def clean_score(v) -> float | None:
    return None if v is None or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 else round(float(v), 4)


def region_dice(evaluated: dict) -> dict[str, float | None]:
    return {r: clean_score(evaluated.get(f"dice-{r.lower()}")) for r in REGIONS}


def fresh_dir(run_dir: Path) -> str:
    shutil.rmtree(run_dir, ignore_errors=True)
    return str(run_dir)


def run_curve(run_dir: Path, modes=("gated",)) -> tuple[list[dict], list[float]]:
    """From a run's ``metrics.jsonl``: per evaluation round ``{"round", mode: {site: {ET, TC, WT}}}`` (None
    where a site does not annotate a region), and the seconds of each training round."""
    records = RunLog(run_dir).records()
    curve: dict[int, dict] = {}
    for r in records:
        if "dice" in r and "phase" not in r and r["mode"] in modes and r["region"] in REGIONS:
            point = curve.setdefault(r["round"], {"round": r["round"], **{m: {} for m in modes}})
            point[r["mode"]].setdefault(r["site"], dict.fromkeys(REGIONS))[r["region"]] = clean_score(r["dice"])
    seconds = [float(r["seconds"]) for r in records if r.get("event") == "train"]
    return [curve[k] for k in sorted(curve)], seconds


def run_gate_accuracy(run_dir: Path, key: str = "gate-accuracy") -> dict | None:
    """The scan gate's last evaluation: per site, the share of validation scans given to the site's domain
    (``key`` "gate-unseen": the share found beyond every domain's reach, given the shared answer)."""
    gates = [r for r in RunLog(run_dir).records() if r.get("event") == "gate"]
    if not gates:
        return None
    last = max(r["round"] for r in gates)
    return {str(r["site"]): r.get(key) for r in gates if r["round"] == last}


def per_case_records(run_dir: Path) -> list[dict]:
    """The final evaluation's per-case Dice, from each simulated site's own ``cases.jsonl`` (kept at the site)."""
    run_id = run_id_of(run_dir)
    recs = [
        r for f in sorted(run_dir.glob("site-state/*/cases.jsonl")) for r in read_jsonl(f) if r.get("run") == run_id
    ]
    last = max((r["round"] for r in recs), default=None)
    return [{k: v for k, v in r.items() if k != "run"} for r in recs if r["round"] == last]


def run_id_of(run_dir: Path) -> str:
    """The id a finished run tagged its sites' saved state with (from its final model)."""
    from uharmony.records.checkpoint import load_checkpoint

    return str(load_checkpoint(run_dir, "final_model.pt")["extra"].get("run-id", ""))


def site_view(run_dir: Path, partition_id: int, cfg: RunConfig, saved: dict | None = None) -> SiteRound:
    """A site's view of a finished run: the final global model and the site's own saved entries
    (``saved``: site-local entries to use instead)."""
    from uharmony.federation.site_round import SiteRound
    from uharmony.records.checkpoint import load_checkpoint

    final = load_checkpoint(run_dir, "final_model.pt")
    run_id = str(final["extra"].get("run-id", ""))
    job = SiteRound({"partition-id": partition_id}, cfg, final["spec"], cfg.strategy, saved=saved, run_id=run_id)
    job.load(final["state"])
    return job


def mean_local_state(run_dir: Path) -> dict | None:
    """The mean of the training sites' site-local entries of this run (as saved in their state folders)."""
    import torch

    from uharmony.federation.site_state import load_local_state

    run_id = run_id_of(run_dir)
    saved = [load_local_state(d) for d in sorted(run_dir.glob("site-state/*"))]
    states = [state for state, info in filter(None, saved) if info.get("run") == run_id and state]
    return {k: torch.stack([x[k].float() for x in states]).mean(0) for k in states[0]} if states else None


def score_every_site(run_dir: Path, cfg: RunConfig) -> dict[str, dict]:
    """Each site of ``cfg``'s federation scores its validation scans with the run's final model, dataset-free
    (the scan gate decides, as in the run's ``gated`` mode), with the site-local entries the run saved for it:
    the sites that took part without labels included (a label-free site's entries are its recalibrated
    statistics). ``cfg`` names the federation whose labels score the scans; the run may have seen a view of
    it with some sites' labels withheld. Returns per site ``{"cells": {region: Dice}, "cases": n, "entries":
    "saved" | "none"}`` ("none": the site kept no entries of this run; its scans are scored with the model's
    initial ones, which no estimate ever set: a reader leaves such a site out, as the UMS-Rep report does)."""
    from uharmony.data import federation_root, load_federation
    from uharmony.model.gating import gate_decisions, uses_scan_gate
    from uharmony.model.training import evaluate_cases

    out = {}
    for pid in range(len(load_federation(federation_root(cfg), seed=cfg.federation_seed).sites)):
        job = site_view(run_dir, pid, cfg)
        if not job.data.val:
            continue
        gate = None
        if uses_scan_gate(job.model):
            gate, _ = gate_decisions(job.model, job.data.val, job.site.domain, cfg.patch_size, job.device)
        scores = evaluate_cases(
            job.model,
            job.data.val,
            None,
            cfg.patch_size,
            job.device,
            gate_weights=gate,
            autocast_dtype=cfg.autocast_dtype,
            channels_last=cfg.channels_last,
        )
        out[job.site.name] = {
            "cells": region_dice(scores),
            "cases": len(job.data.val),
            "entries": "saved" if job.saved is not None else "none",
        }
    return out

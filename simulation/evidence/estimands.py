"""The pre-registered estimands (docs/preregistration.md), computed from a training job's per-case records.

A job's value is a mean over cells (site, region); a cell's value is the mean over the site's validation cases
of the per-case Dice under one protocol mode. ``rule``: ``brats`` (every case; empty truth and prediction score
1) or ``nonempty`` (cases whose truth is empty in the region left out); ``metric``: ``dice`` or ``lesion``
(lesion-wise Dice).
"""

from __future__ import annotations

import math
import statistics

from .design import conflict_cells

REGIONS = ("ET", "TC", "WT")
TWIN_SITE = "2"  # S3's site whose scanner copies site 1's: its conflict cells are the "twin" estimand
MET_SITE, PED_SITE = "3", "5"


def cell_values(cases: list[dict], mode: str, rule: str = "brats", metric: str = "dice") -> dict[tuple, float]:
    """(site, region) -> mean over the site's cases of one protocol mode."""
    sums: dict[tuple, list[float]] = {}
    for r in cases:
        if r.get("mode") != mode:
            continue
        for region in (*REGIONS, "NET"):
            v = r.get(f"{metric}-{region.lower()}")
            if v is None:
                continue
            if rule == "nonempty" and not r.get(f"truth-{region.lower()}"):
                continue
            sums.setdefault((str(r["site"]), region), []).append(float(v))
    return {cell: statistics.fmean(v) for cell, v in sums.items()}


def _mean(values: dict[tuple, float], cells) -> float:
    got = [values[c] for c in cells if c in values]
    return statistics.fmean(got) if got else math.nan


def estimands(cases: list[dict], mode: str, scenario: str) -> dict[str, float]:
    """Every estimand of one job under one mode (NaN where the job has no such cell)."""
    brats, nonempty = cell_values(cases, mode), cell_values(cases, mode, "nonempty")
    lesion = cell_values(cases, mode, metric="lesion")
    every = sorted(c for c in brats if c[1] in REGIONS)
    conflict = list(conflict_cells()) if scenario == "S3" else []
    free = [c for c in every if c not in conflict]
    out = {
        "all": _mean(brats, every),
        "all_nonempty": _mean(nonempty, every),
        "conflict_free": _mean(brats, free),
    }
    if scenario == "S3":
        out.update(
            conflict=_mean(brats, conflict),
            conflict_nonempty=_mean(nonempty, conflict),
            conflict_free_nonempty=_mean(nonempty, free),
            twin=_mean(brats, [c for c in conflict if c[0] == TWIN_SITE]),
            lesion_met=_mean(lesion, [(MET_SITE, r) for r in REGIONS]),
            net=brats.get((PED_SITE, "NET"), math.nan),
        )
    return out


def per_seed(records: list[dict], scenario: str, method: str, mode: str, estimand: str, kind: str = "confirm") -> dict:
    """seed -> the estimand of ``method`` under ``mode`` over the design's jobs of ``kind``."""
    out = {}
    for r in records:
        if r.get("stage") == kind and r["scenario"] == scenario and r["method"] == method:
            value = estimands(r["cases"], mode, scenario).get(estimand, math.nan)
            if value == value:
                out[r["seed"]] = value
    return out

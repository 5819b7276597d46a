"""Names and helpers the page's sections share (``report``)."""

from __future__ import annotations

import math
import statistics

from .design import (
    METHODS,
    VARIANTS,
)
from .estimands import estimands

NAMES = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedbn": "FedBN",
    "uharmony": "U-Harmony",
    "local": "local",
    "centralized-uharmony": "centralized U-Harmony",
    "voxel-classifier": "voxel classifier",
}


MODE_NAMES = {
    "shared": "as trained",
    "routed": "+ router",
    "mean": "mean of the sites' entries",
    "own-gated": "own statistics, gate",
    "own": "own site's entries",
    "oracle": "own expert (oracle)",
    "floor": "",
}


ESTIMANDS = {
    "conflict": "conflict cells (primary)",
    "all": "all cells",
    "conflict_free": "conflict-free cells",
    "twin": "twin cells (site 2)",
    "conflict_nonempty": "conflict, empty truth left out",
    "all_nonempty": "all, empty truth left out",
    "lesion_met": "lesion-wise, MET site",
    "net": "NET, PED site",
}


def trains(records, stage=None):
    return [r for r in records if r.get("kind") in ("train", "floor") and (stage is None or r.get("stage") == stage)]


def seed_values(records, stage, scenario, method, mode, estimand, extra=None) -> dict[int, float]:
    """seed -> the estimand of one method and mode over one stage's jobs (``extra``: only jobs with these
    run-config changes, e.g. a pilot's lr)."""
    out = {}
    for r in trains(records, stage):
        if r["scenario"] != scenario or r["method"] != method:
            continue
        if extra and any(r.get("extra", {}).get(k, r.get(k.replace("-", "_"))) != v for k, v in extra.items()):
            continue
        v = estimands(r["cases"], mode, scenario).get(estimand, math.nan)
        if v == v:
            out[r["seed"]] = v
    return out


def pct(v) -> str:
    return "–" if v is None or v != v else f"{100 * v:.1f}"


def msd(values: dict) -> str:
    v = list(values.values())
    if not v:
        return "–"
    sd = f" ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else ""
    return f"{100 * statistics.fmean(v):.1f}{sd}"


def interim(n: int, seeds) -> str:
    """`` (interim: n of N seeds)`` while fewer than the registered seeds are in, else nothing."""
    return "" if n >= len(seeds) else f" (interim: {n} of {len(seeds)} seeds)"


def verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def methods_run(records, scen: str) -> list[str]:
    """The design's methods of a scenario, and any issue-30 variant that ran on the confirmatory seeds."""
    ran = {r["method"] for r in trains(records, "confirm") if r["scenario"] == scen}
    return [*METHODS[scen], *(m for m in VARIANTS if m in ran)]

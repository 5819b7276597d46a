"""The page's descriptive section on S3's sites with their own modality sets and label spaces (issue 30, item
4): how each method segments at the metastasis site without T2 (site 3) and at the meningioma site without T1
that annotates the whole tumour only (site 4). Read from the confirmatory records; not a registered estimand."""

from __future__ import annotations

import math
import statistics

from simulation.kit.stats import paired

from .design import DATASET_FREE, METHODS
from .estimands import cell_values
from .report_common import NAMES, msd, trains

SITES = {"3": "site 3 (metastasis, no T2)", "4": "site 4 (meningioma, no T1, whole tumour only)"}
AGAINST = ("local", "fedavg", "fedbn")  # U-Harmony − each, paired over the seeds


def _site_means(records, site: str) -> dict[str, dict[int, float]]:
    """method -> seed -> the site's mean Dice over the regions it annotates, dataset-free."""
    out: dict[str, dict[int, float]] = {}
    for r in trains(records, "confirm"):
        if r["scenario"] != "S3" or r["method"] not in DATASET_FREE:
            continue
        cells = [v for (s, region), v in cell_values(r["cases"], DATASET_FREE[r["method"]]).items() if s == site]
        cells = [v for v in cells if v == v]
        if cells:
            out.setdefault(r["method"], {})[r["seed"]] = statistics.fmean(cells)
    return out


def sites_section(records) -> list[str]:
    tables = {site: _site_means(records, site) for site in SITES}
    if not any(tables.values()):
        return []
    methods = [m for m in METHODS["S3"] if any(m in t for t in tables.values())]
    lines = [
        "### Sites with their own modality sets and label spaces (S3; descriptive, not a registered estimand)",
        "",
        "Each site's mean Dice over the regions it annotates (NET left out), dataset-free, mean ± SD over the seeds. "
        "Whether the whole-tumour-only site helps or harms ET and TC at the other sites needs a federation without "
        "it, which has not run.",
        "",
        "| method | " + " | ".join(SITES.values()) + " |",
        "|---|" + "---|" * len(SITES),
    ]
    for m in methods:
        lines.append(f"| {NAMES[m]} | " + " | ".join(msd(tables[s].get(m, {})) for s in SITES) + " |")
    lines.append("")
    for site, label in SITES.items():
        own = tables[site].get("uharmony", {})
        for other in AGAINST:
            d = paired(own, tables[site].get(other, {}))
            if d is not None and not math.isnan(d.low):
                lines.append(f"- {label}: U-Harmony − {NAMES[other]} {d.text(unit='DSC')} ({d.n} seeds)")
    return [*lines, ""]

"""The page's descriptive section on S3's sites with their own modality sets and label spaces (issue 30, item
4): how each method segments at the metastasis site without T2 (site 3) and at the meningioma site without T1
that annotates the whole tumour only (site 4). Read from the confirmatory records; not a registered estimand."""

from __future__ import annotations

import math
import statistics

from simulation.kit.stats import noninferior, paired

from .design import ABLATED_METHODS, ABLATED_SITE, CONFIRM_SEEDS, DATASET_FREE, METHODS
from .estimands import cell_values
from .report_common import NAMES, interim, msd, trains, verdict

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
        "Whether the whole-tumour-only site helps or harms ET and TC at the other sites: the next section.",
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


NONINFERIORITY = 0.01  # the registered margin: 1 DSC


def _ablations(records) -> list[dict]:
    """The ablate-site training jobs that ran without exactly the registered site."""
    return [r for r in trains(records, "ablate-site") if r.get("without") == [ABLATED_SITE]]


def _other_sites(records, stage: str, regions: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """method -> seed -> the mean Dice over ``regions``' cells of every site but the ablated one, dataset-free."""
    out: dict[str, dict[int, float]] = {}
    for r in trains(records, stage) if stage == "confirm" else _ablations(records):
        if r["scenario"] != "S3" or r["method"] not in ABLATED_METHODS:
            continue
        cells = cell_values(r["cases"], DATASET_FREE[r["method"]])
        got = [v for (s, region), v in cells.items() if s != ABLATED_SITE and region in regions and v == v]
        if got:
            out.setdefault(r["method"], {})[r["seed"]] = statistics.fmean(got)
    return out


def ablation_section(records) -> list[str]:
    """Issue 30 item 4's registered contrast: S3 with the whole-tumour-only site − S3 without it, per method,
    on the ET and TC cells of the other sites (secondary: their WT cells), paired over the seeds."""
    if not _ablations(records):
        return []
    lines = [
        f"### What the whole-tumour-only site adds at the other sites (S3 with site {ABLATED_SITE} − without it)",
        "",
        f"Registered in [preregistration.md](preregistration.md) before it ran: the same seeds, data and settings as "
        f"the confirmatory runs, with site {ABLATED_SITE}'s SuperNode absent for the whole run (`uharmony-evidence "
        f"--stage ablate-site`). Mean Dice over the other sites' cells, dataset-free; the contrast is *with − "
        f"without*, paired over the seeds. Target: U-Harmony's ET/TC contrast non-inferior, the lower 95 % bound "
        f"≥ −{100 * NONINFERIORITY:.0f} DSC.",
        "",
        "| method | cells | with the site | without it | with − without | seeds |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for label, regions in (("ET, TC", ("ET", "TC")), ("WT", ("WT",))):
        with_, without = _other_sites(records, "confirm", regions), _other_sites(records, "ablate-site", regions)
        for m in ABLATED_METHODS:
            a, b = with_.get(m, {}), without.get(m, {})
            common = sorted(set(a) & set(b))
            d, ok = noninferior(a, b, NONINFERIORITY)
            pair = {s: a[s] for s in common}, {s: b[s] for s in common}
            text = d.text(unit="DSC") if d else "–"
            lines.append(f"| {NAMES[m]} | {label} | {msd(pair[0])} | {msd(pair[1])} | {text} | {len(common)} |")
            if m == "uharmony" and regions == ("ET", "TC") and d:
                n = len(common)
                notes.append(
                    f"- Target (U-Harmony, ET and TC, lower bound ≥ −1): {verdict(ok)}{interim(n, CONFIRM_SEEDS)}"
                )
    return [*lines, "", *notes, ""]

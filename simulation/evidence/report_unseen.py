"""The page's sections on sites a federation never saw (issue 30 item 5; docs/preregistration.md, "an unseen
site"): each held-out site's validation scans segmented dataset-free by the runs that left it out
(``--stage ablate-site``: site 4 on seeds 100-109; ``--stage rotate-unseen``: every other site on seeds
100-102), scored on the regions the site annotates (ET, TC, WT; NET left out)."""

from __future__ import annotations

import statistics

from simulation.kit.stats import noninferior, paired

from .design import ABLATED_SITE, CONFIRM_SEEDS, ROTATED_SITES, ROTATION_SEEDS
from .estimands import REGIONS, cell_values
from .report_common import interim, msd, trains, verdict
from .report_sites import NONINFERIORITY

ARMS = (  # (label, method, mode); the first three are the registered contrasts' ends
    ("U-Harmony, calibrated on the site's scans", "uharmony", "unseen-calibrated"),
    ("U-Harmony, each scan's own statistics (no calibration)", "uharmony", "unseen-per-scan"),
    ("FedAvg", "fedavg", "unseen"),
    ("U-Harmony, initial statistics", "uharmony", "unseen"),
    ("U-Harmony, nearest site's statistics", "uharmony", "routed"),
    ("U-Harmony, the sites' mean statistics", "uharmony", "mean"),
)
CALIBRATED, PER_SCAN, FEDAVG = (a[0] for a in ARMS[:3])


def held_out(records, site: str, method: str, mode: str) -> dict[int, float]:
    """seed -> the held-out ``site``'s mean Dice over its annotated regions, from the runs that left exactly it
    out, under one method and mode."""
    out = {}
    for r in trains(records):
        if r.get("stage") not in ("ablate-site", "rotate-unseen") or r.get("without") != [site]:
            continue
        if r["scenario"] == "S3" and r["method"] == method:
            cells = cell_values(r["cases"], mode)
            got = [v for (s, region), v in cells.items() if s == site and region in REGIONS and v == v]
            if got:
                out[r["seed"]] = statistics.fmean(got)
    return out


def _targets(arms: dict[str, dict[int, float]], seeds) -> list[str]:
    """The two registered contrasts, paired over the seeds, decided by their bounds."""
    lines = []
    vs_fedavg, ok = noninferior(arms[CALIBRATED], arms[FEDAVG], NONINFERIORITY)
    if vs_fedavg:
        lines.append(
            f"- Target, calibrated U-Harmony − FedAvg {vs_fedavg.text(unit='DSC')}, lower bound ≥ −1: "
            f"{verdict(ok)}{interim(vs_fedavg.n, seeds)}"
        )
    vs_none = paired(arms[CALIBRATED], arms[PER_SCAN])
    if vs_none:
        ok = vs_none.n >= 2 and vs_none.low > 0
        lines.append(
            f"- Target, calibration − each scan's own statistics {vs_none.text(unit='DSC')}, interval above 0: "
            f"{verdict(ok)}{interim(vs_none.n, seeds)}"
        )
    return lines


def unseen_section(records) -> list[str]:
    """Site 4, the site the ablation runs left out, on seeds 100-109 (one rotation)."""
    arms = {label: held_out(records, ABLATED_SITE, m, mode) for label, m, mode in ARMS}
    if not any(arms.values()):
        return []
    lines = [
        f"### Site {ABLATED_SITE} as an unseen site (issue 30 item 5)",
        "",
        f"The runs without site {ABLATED_SITE} (above): its validation scans segmented dataset-free by a model that "
        "never saw the site, scored on the regions it annotates. Registered in "
        '[preregistration.md](preregistration.md) ("an unseen site") before it ran.',
        "",
        "| model and statistics | Dice | calibrated U-Harmony − this | seeds |",
        "|---|---|---|---|",
    ]
    for label, _, _ in ARMS:
        d = paired(arms[CALIBRATED], arms[label]) if label != CALIBRATED else None
        lines.append(f"| {label} | {msd(arms[label])} | {d.text(unit='DSC') if d else '–'} | {len(arms[label])} |")
    return [*lines, "", *_targets(arms, CONFIRM_SEEDS), ""]


def rotation_section(records) -> list[str]:
    """Every S3 site left out in turn on seeds 100-102; a seed's value is the mean over the five held-out sites
    (it counts only with all five rotations in)."""
    sites = sorted((*ROTATED_SITES, ABLATED_SITE))
    per_site = {site: {label: held_out(records, site, m, mode) for label, m, mode in ARMS[:4]} for site in sites}
    if not any(per_site[s][FEDAVG] for s in ROTATED_SITES):
        return []
    pooled = {}
    for label, _, _ in ARMS[:4]:
        complete = set(ROTATION_SEEDS).intersection(*(per_site[s][label] for s in sites))
        pooled[label] = {seed: statistics.fmean(per_site[s][label][seed] for s in sites) for seed in complete}
    lines = [
        "### Every site unseen in turn (issue 30 item 5, rotated; seeds 100–102)",
        "",
        "Each S3 site left out of a whole run in turn (`--stage rotate-unseen`; site 4's rotation is the runs "
        "above), its validation scans segmented dataset-free, scored on the regions it annotates; mean ± SD over "
        "the seeds. A seed's pooled value is the mean over the five held-out sites.",
        "",
        "| held-out site | " + " | ".join(label for label, _, _ in ARMS[:4]) + " |",
        "|---|" + "---|" * 4,
    ]
    for site in sites:
        lines.append(f"| {site} | " + " | ".join(msd(per_site[site][label]) for label, _, _ in ARMS[:4]) + " |")
    lines.append("| **pooled** | " + " | ".join(msd(pooled[label]) for label, _, _ in ARMS[:4]) + " |")
    return [*lines, "", *_targets(pooled, ROTATION_SEEDS), ""]

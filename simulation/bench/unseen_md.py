"""The results page's unseen-site section: each site left out of training in turn, segmented dataset-free."""

from __future__ import annotations

from simulation.kit.page import ms
from simulation.kit.stats import paired

from .report import site_score

# calibrated (the default gate: gate-unseen = "nearest"), no calibration, calibrated with the "none of these" test
KEYS = ("dice", "uncalibrated", "unseen_shared")
ROWS = (
    ("fedavg", "dice", "FedAvg"),
    ("fedbn", "dice", "FedBN (mean of the sites' norm layers)"),
    ("uharmony", "uncalibrated", "U-Harmony, gated, no calibration"),
    ("uharmony", "dice", "U-Harmony, gated, calibrated"),
    (
        "uharmony",
        "unseen_shared",
        'U-Harmony, gated, calibrated, with the “none of these” test (`gate-unseen = "shared"`)',
    ),
)


def _order(sites) -> list[str]:
    return sorted(sites, key=lambda s: (len(s), s))


def unseen_pairs(records: list[dict]) -> dict[tuple, dict]:
    """(method, one of KEYS) -> {(seed, held-out site): score}: paired over both."""
    out: dict[tuple, dict] = {}
    for r in records:
        if r["kind"] == "unseen":
            for key in KEYS:
                if key in r:
                    out.setdefault((r["method"], key), {})[(r["seed"], r["held_out"])] = site_score(r[key])
    return out


def unseen_section(records: list[dict]) -> list[str]:
    recs = [r for r in records if r["kind"] == "unseen"]
    if not recs:
        return []
    sites = _order({r["held_out"] for r in recs})
    out = [
        f"Scenario {recs[0]['scenario']}. Each site in turn is left out of training (the others train for the same "
        "rounds and steps); its validation scans are then segmented without a site label. U-Harmony first "
        "computes the site's harmonization statistics from its unlabeled training scans (forward passes, no "
        "labels, no gradients); FedBN's unseen site gets the mean of the training sites' normalization layers. "
        "The row with the “none of these” test is the same calibrated model, a scan beyond every training domain's "
        "reach given the shared answer (docs/method.md). "
        f"Seeds {sorted({r['seed'] for r in recs})}.",
        "",
        "| method | " + " | ".join(f"site {s} left out" for s in sites) + " | mean |",
        "|---|" + "---|" * (len(sites) + 1),
    ]
    for method, key, name in ROWS:
        sel = [r for r in recs if r["method"] == method and key in r]
        if sel:
            cells = [ms([site_score(r[key]) for r in sel if r["held_out"] == s]) for s in sites]
            out.append(f"| {name} | " + " | ".join(cells) + f" | **{ms([site_score(r[key]) for r in sel])}** |")
    beyond = [r for r in recs if "beyond_reach" in r]
    if beyond:
        cells = [ms([r["beyond_reach"] for r in beyond if r["held_out"] == s], digits=0) for s in sites]
        out.append("| share of the left-out site's scans beyond every domain's reach (%) | " + " | ".join(cells) + " |")
    pairs = unseen_pairs(records)
    lines = []
    for a, b, what in (
        (("uharmony", "unseen_shared"), ("uharmony", "dice"), "the “none of these” test − the default gate"),
        (("uharmony", "dice"), ("fedavg", "dice"), "U-Harmony calibrated − FedAvg"),
        (("uharmony", "dice"), ("fedbn", "dice"), "U-Harmony calibrated − FedBN"),
        (("uharmony", "dice"), ("uharmony", "uncalibrated"), "calibration − none"),
    ):
        d = paired(pairs.get(a, {}), pairs.get(b, {}))
        if d is not None:
            lines.append(f"- {what}: {d.text(unit='DSC')} (paired over {d.n} left-out sites × seeds)")
    return out + ([""] + lines if lines else [])

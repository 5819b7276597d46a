"""The results page's check of where the seed-to-seed spread of a paired difference comes from.

A seed draws the federation (which cases each site has, which are held out) and the initial weights; the
per-seed difference between two methods then varies with the training (data and weights) and with the few
validation scans it is measured on. Resampling each site's validation scans (the same resample for both
methods: the comparison stays paired) estimates the second part; what is left is the training's.
"""

from __future__ import annotations

import random
import statistics

from simulation.kit.stats import t_quantile

from .report import LABELS

PAIRS = (("S2", "uharmony", "fedbn"), ("S2", "uharmony", "fedavg"), ("S0", "uharmony", "fedavg"))
REGIONS = ("et", "tc", "wt")
RESAMPLES = 2000
HALF_WIDTH = 2.0  # DSC: the interval half-width the seeds-needed column is for


def case_dice(rec: dict) -> dict[str, dict[str, dict[str, float]]]:
    """site -> case -> region -> Dice at the last round, in the mode the page reports (gated, else the plain
    head, which per-case records call ``oracle``)."""
    final = [c for c in rec.get("per_case") or [] if c.get("round") == rec.get("rounds")]
    mode = "gated" if any(c.get("mode") == "gated" for c in final) else "oracle"
    out: dict = {}
    for c in final:
        if c.get("mode") == mode:
            vals = {r: c[f"dice-{r}"] for r in REGIONS if c.get(f"dice-{r}") is not None}
            out.setdefault(str(c["site"]), {})[str(c["case"])] = vals
    return out


def score(per_site: dict, pick: dict[str, list[str]]) -> float:
    """Mean over sites of the mean over annotated regions of the mean over the picked cases (the page's
    score, in DSC points)."""
    sites = []
    for site, cases in pick.items():
        regions = [
            statistics.fmean(v)
            for r in REGIONS
            if (v := [per_site[site][c][r] for c in cases if r in per_site[site][c]])
        ]
        if regions:
            sites.append(statistics.fmean(regions))
    return 100 * statistics.fmean(sites)


def seeds_needed(sd: float, half_width: float = HALF_WIDTH) -> int | None:
    """Fewest seeds whose 95 % interval of a paired mean is at most ``half_width`` wide either side at this SD."""
    for n in range(2, 201):
        if t_quantile(n - 1) * sd / n**0.5 <= half_width:
            return n
    return None


def spread(records: list[dict], scenario: str, a: str, b: str, resamples: int = RESAMPLES) -> dict | None:
    """Per-seed differences a − b, their SD over seeds, and each seed's resampling SE of the difference."""
    rec = {(r["method"], r["seed"]): r for r in records if r.get("kind") == "method" and r.get("scenario") == scenario}
    seeds = sorted(s for m, s in rec if m == a and (b, s) in rec)
    rng = random.Random(0)
    diffs, ses, scans = [], [], []
    for seed in seeds:
        x, y = case_dice(rec[(a, seed)]), case_dice(rec[(b, seed)])
        cases = {s: sorted(set(x[s]) & set(y.get(s, {}))) for s in x}
        cases = {s: c for s, c in cases.items() if c}
        if not cases:
            return None
        diffs.append(score(x, cases) - score(y, cases))
        boot = []
        for _ in range(resamples):
            pick = {s: [rng.choice(c) for _ in c] for s, c in cases.items()}
            boot.append(score(x, pick) - score(y, pick))
        ses.append(statistics.stdev(boot))
        scans.append(sum(len(c) for c in cases.values()))
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    share = statistics.fmean(se**2 for se in ses) / sd**2 if sd > 0 else float("nan")
    return {"diffs": diffs, "sd": sd, "ses": ses, "scans": scans, "share": share, "needed": seeds_needed(sd)}


def noise_section(records: list[dict], resamples: int = RESAMPLES) -> list[str]:
    rows = []
    for scen, a, b in PAIRS:
        s = spread(records, scen, a, b, resamples)
        if s is None:
            continue
        needed = s["needed"] or "> 200"
        per_seed = ", ".join(f"{d:+.1f}" for d in s["diffs"])
        rows.append(
            f"| {scen} | U-Harmony gated − {LABELS.get(b, b)} | {per_seed} | {s['sd']:.1f} | "
            f"{statistics.fmean(s['ses']):.1f} | {min(s['share'], 1.0):.0%} | {needed} |"
        )
    if not rows:
        return []
    return [
        "Each seed's difference resampled over each site's validation scans (the same resample for both methods, "
        f"{resamples} times, seeded): its spread is what the few scans add; the rest of the seed-to-seed spread is "
        "the training's (the data and initial weights the seed draws). A site with one validation scan adds "
        "nothing to the resampling, so the evaluation's share is, if anything, underestimated.",
        "",
        "| scenario | difference | per seed (DSC) | SD over seeds | evaluation SE per seed (mean) | evaluation's "
        f"share of the variance | seeds for a ±{HALF_WIDTH:g} DSC interval |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]

"""The page's sections on where the spread comes from (evaluation's share, initial weights alone) and on
what U-Harmony's site-specific parts carry (the mechanism checks)."""

from __future__ import annotations

import math
import statistics

from simulation.kit.stats import eval_share, interval, paired

from .design import (
    DATASET_FREE,
    SIDE_DATA_SEED,
    conflict_cells,
)
from .estimands import cell_values, estimands
from .report_common import NAMES, pct, seed_values, trains


def noise_section(records, free) -> list[str]:
    """The pooled within-seed estimator: what share of each primary contrast's seed-to-seed variance evaluation adds."""
    out = [
        "### Where the spread comes from",
        "",
        "Evaluation's share of each contrast's seed-to-seed variance (per site, the per-case differences' "
        "variance pooled over seeds, over the site's case count); the rest is training.",
        "",
        "| contrast | seed-to-seed SD | evaluation SD | evaluation share |",
        "|---|---|---|---|",
    ]
    cells = set(conflict_cells())
    for a, b in (("uharmony", "fedavg"), ("uharmony", "fedbn")):
        per_case = _case_differences(records, a, b, cells)
        got = eval_share(per_case)
        if got:
            out.append(
                f"| {NAMES[a]} − {NAMES[b]} (conflict) | {100 * math.sqrt(got['seed_variance']):.1f} | "
                f"{100 * math.sqrt(got['eval_variance']):.1f} | {100 * got['eval_share']:.0f} % |"
            )
    return out + [""]


def _case_differences(records, a, b, cells) -> dict:
    """seed -> site -> per-case differences (a - b) of the mean over the site's estimand cells, dataset-free."""
    jobs = {(r["method"], r["seed"]): r for r in trains(records, "confirm") if r["scenario"] == "S3"}
    out = {}
    for (m, seed), ra in jobs.items():
        rb = jobs.get((b, seed))
        if m != a or rb is None:
            continue
        score = {}
        for method, rec in ((a, ra), (b, rb)):
            for c in rec["cases"]:
                if c["mode"] != DATASET_FREE[method]:
                    continue
                vals = [c.get(f"dice-{r.lower()}") for s, r in cells if s == str(c["site"])]
                vals = [x for x in vals if x is not None]
                if vals:
                    score.setdefault((str(c["site"]), c["case"]), {})[method] = statistics.fmean(vals)
        for (site, _), pair in score.items():
            if len(pair) == 2:
                out.setdefault(seed, {}).setdefault(site, []).append(pair[a] - pair[b])
    return out


def side_section(records) -> list[str]:
    """The init-seed side study: the federation of one data seed trained from five initial weights and patch
    draws, beside the confirmatory seeds' spread (data and weights both vary)."""
    jobs = trains(records, "side")
    if not jobs:
        return []
    methods = ("fedavg", "uharmony")
    side = {
        m: {
            r["extra"]["init-seed"]: estimands(r["cases"], DATASET_FREE[m], "S3")["conflict"]
            for r in jobs
            if r["method"] == m
        }
        for m in methods
    }
    conf = {m: seed_values(records, "confirm", "S3", m, DATASET_FREE[m], "conflict") for m in methods}
    out = [
        f"## Side study: optimisation noise alone (S3, data seed {SIDE_DATA_SEED}, init seeds 300–304)",
        "",
        "The same federation (data seed 100) trained from five initial weights and patch draws; dataset-free Dice on "
        "the conflict cells.",
        "",
        "| init seed | FedAvg | U-Harmony | U-Harmony − FedAvg |",
        "|---|---|---|---|",
    ]
    for i in sorted(set(side["fedavg"]) | set(side["uharmony"])):
        a, b = side["uharmony"].get(i), side["fedavg"].get(i)
        d = f"{100 * (a - b):+.1f}" if a is not None and b is not None else "–"
        out.append(f"| {i} | {pct(b)} | {pct(a)} | {d} |")
    diff_side = {i: side["uharmony"][i] - side["fedavg"][i] for i in set(side["uharmony"]) & set(side["fedavg"])}
    diff_conf = {s: conf["uharmony"][s] - conf["fedavg"][s] for s in set(conf["uharmony"]) & set(conf["fedavg"])}
    c = paired(side["uharmony"], side["fedavg"])
    out += [
        "",
        f"U-Harmony − FedAvg over initial weights alone: {c.text() if c else '–'}.",
        "",
        "SD over initial weights alone against SD over the confirmatory seeds; the variance ratio with its 95 % "
        "F interval (the two samples treated as independent; with 5 and 10 values either SD is rough):",
        "",
        "| | SD, initial weights alone | SD, confirmatory seeds | variance ratio [95 %] |",
        "|---|---|---|---|",
    ]
    for label, a, b in (
        ("FedAvg", side["fedavg"], conf["fedavg"]),
        ("U-Harmony", side["uharmony"], conf["uharmony"]),
        ("U-Harmony − FedAvg", diff_side, diff_conf),
    ):
        if len(a) > 1 and len(b) > 1:
            sa, sb = statistics.stdev(a.values()), statistics.stdev(b.values())
            ratio, low, high = _variance_ratio(sa, len(a), sb, len(b))
            out.append(
                f"| {label} | {100 * sa:.1f} ({len(a)}) | {100 * sb:.1f} ({len(b)}) | "
                f"{ratio:.2f} [{low:.2f}, {high:.2f}] |"
            )
    return out + [""]


def _variance_ratio(sa: float, na: int, sb: float, nb: int) -> tuple[float, float, float]:
    """(sa² / sb², and its 95 % interval from the F distribution with na - 1 and nb - 1 degrees of freedom)."""
    from scipy import stats

    ratio = (sa / sb) ** 2 if sb else math.inf
    hi_q, lo_q = stats.f.ppf(0.975, na - 1, nb - 1), stats.f.ppf(0.025, na - 1, nb - 1)
    return ratio, ratio / hi_q, ratio / lo_q


MECHANISM_CHECKS = {
    "swap": "the next site's entries",
    "mean-stats": "the sites' mean entries",
    "gain0": "restoration gain g = 0",
    "shared": "no expert (shared answer)",
}


def mechanism_section(records) -> list[str]:
    """Inference-only checks of the U-Harmony runs: what each costs against the own expert and own entries."""
    mech = [r for r in records if r.get("kind") == "mechanism" and r["scenario"] == "S3"]
    if not mech:
        return []
    runs = {r["job"]: r for r in trains(records)}
    conflict = set(conflict_cells())
    rows: dict[tuple, dict] = {}
    for r in mech:
        base = runs.get(r["of"])
        if base is None:
            continue
        own = cell_values(base["cases"], "oracle")
        for check in MECHANISM_CHECKS:
            got = cell_values(r["cases"], check)
            for kind in ("conflict", "conflict-free"):
                keep = [
                    c
                    for c in got
                    if c in own and c[1] in ("ET", "TC", "WT") and (c in conflict) == (kind == "conflict")
                ]
                if keep:
                    rows.setdefault((r["method"], check, kind), {})[r["seed"]] = statistics.fmean(
                        own[c] - got[c] for c in keep
                    )
    seeds = ", ".join(str(s) for s in sorted({s for v in rows.values() for s in v}))
    out = [
        "## Mechanism: what U-Harmony's site-specific parts carry (S3, inference only)",
        "",
        "Dice lost (DSC) against the site's own expert with its own site-local entries, mean over the site's cells, "
        f"then over the seeds (those with models on the machine that ran the checks: {seeds}), with a t interval; "
        "positive: the check hurts.",
        "",
        "| method | check | conflict cells | conflict-free cells | seeds |",
        "|---|---|---|---|---|",
    ]
    for (m, check, kind), vals in sorted(rows.items()):
        if kind == "conflict":
            c, f = interval(list(vals.values())), interval(list(rows.get((m, check, "conflict-free"), {}).values()))
            texts = [x.text() if x else "–" for x in (c, f)]
            out.append(f"| {m} | {MECHANISM_CHECKS[check]} | {texts[0]} | {texts[1]} | {len(vals)} |")
    out += [
        "",
        "Issue 30's targets: swapping a site's entries for another's costs >= 3 DSC on its conflict cells; the shared "
        "answer alone is within 5 DSC of the own expert on conflict-free cells.",
        "",
    ]
    return out

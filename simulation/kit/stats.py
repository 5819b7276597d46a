"""Paired statistics over seeds (``scipy.stats``), for every study (bench, evidence, UMS-Rep, join): the same
seed gives every method the same federation and initial weights, so a contrast is the mean of the per-seed
differences with its Student's t interval.

- ``paired``: mean, 95 % interval, p-value (two-sided t test of a zero mean), n;
- ``tost``: equivalence within +-margin: the 90 % interval inside the margins (two one-sided tests at 5 %);
- ``noninferior``: the lower 95 % bound at or above -margin;
- ``holm``: Holm's step-down adjustment of a family of p-values;
- ``signed_rank``: Wilcoxon's signed-rank test and the median difference, beside the t interval;
- ``eval_share``: what share of a contrast's seed-to-seed variance evaluation adds (the pooled within-seed
  estimator: per site the per-case differences' variance pooled over seeds, over the site's case count).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Contrast:
    mean: float
    low: float  # at the level it was made at
    high: float
    p: float
    n: int
    level: float = 0.95

    @property
    def significant(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, unit: str = "") -> str:
        """``+5.0 [+1.2, +8.8]`` (``unit`` after the mean), with ``, not significant`` when the interval holds 0."""
        mean = f"{self.mean * scale:+.1f}" + (f" {unit}" if unit else "")
        if self.n < 2:
            return f"{mean} (1 seed: no interval)"
        verdict = "" if self.significant else ", not significant"
        return f"{mean} [{self.low * scale:+.1f}, {self.high * scale:+.1f}]{verdict}"


def t_quantile(df: int, level: float = 0.95) -> float:
    """Student's t quantile of a two-sided ``level`` interval with ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + level / 2, df))


def paired(a: dict, b: dict, level: float = 0.95) -> Contrast | None:
    """``a - b`` over the seeds both have (seed -> value); None without a common seed."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] == a[s] and b[s] == b[s]]
    return interval(diffs, level)


def interval(diffs: list[float], level: float = 0.95) -> Contrast | None:
    if not diffs:
        return None
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return Contrast(mean, math.nan, math.nan, math.nan, 1, level)
    se = statistics.stdev(diffs) / math.sqrt(n)
    if se == 0:
        return Contrast(mean, mean, mean, 0.0 if mean else 1.0, n, level)
    half = t_quantile(n - 1, level) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return Contrast(mean, mean - half, mean + half, p, n, level)


def tost(a: dict, b: dict, margin: float) -> tuple[Contrast | None, bool]:
    """Equivalence of ``a`` and ``b`` within ``margin``: (the 90 % interval, whether it lies inside)."""
    c = paired(a, b, level=0.90)
    return c, bool(c and c.n >= 2 and -margin < c.low and c.high < margin)


def noninferior(a: dict, b: dict, margin: float) -> tuple[Contrast | None, bool]:
    """``a`` not worse than ``b`` by more than ``margin``: (the 95 % interval, whether its lower bound >= -margin)."""
    c = paired(a, b)
    return c, bool(c and c.n >= 2 and c.low >= -margin)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-adjusted p-values of a family (NaN stays NaN and takes no rank)."""
    ranked = sorted((p, k) for k, p in pvalues.items() if p == p)
    out, running, m = dict.fromkeys(pvalues, math.nan), 0.0, len(ranked)
    for i, (p, k) in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def eval_share(per_case: dict[int, dict[str, list[float]]]) -> dict[str, float]:
    """``per_case[seed][site]``: the per-case differences (of a contrast, each case's mean over the estimand's
    cells at its site) at each site; the seed's estimate is the mean over sites of the site means. Returns the
    seed-to-seed variance of the estimate, the evaluation variance (the pooled within-seed variance at each site
    over its case count, averaged over seeds, over the squared site count) and its share."""
    seeds = sorted(per_case)
    estimates = [statistics.fmean(statistics.fmean(v) for v in per_case[s].values()) for s in seeds]
    if len(seeds) < 2:
        return {}
    total = statistics.variance(estimates)
    sites = sorted({site for s in seeds for site in per_case[s]})
    pooled = {}
    for site in sites:
        sq = sum(
            sum((x - statistics.fmean(v)) ** 2 for x in v) for s in seeds if len(v := per_case[s].get(site, [])) > 1
        )
        df = sum(len(per_case[s].get(site, [])) - 1 for s in seeds if len(per_case[s].get(site, [])) > 1)
        pooled[site] = sq / df if df else math.nan
    known = [v for v in pooled.values() if v == v]
    fill = statistics.fmean(known) if known else math.nan
    evaluation = statistics.fmean(
        sum((pooled[site] if pooled[site] == pooled[site] else fill) / len(per_case[s][site]) for site in per_case[s])
        / len(per_case[s]) ** 2
        for s in seeds
    )
    return {
        "seed_variance": total,
        "eval_variance": evaluation,
        "eval_share": evaluation / total if total else math.nan,
    }


def signed_rank(a: dict, b: dict) -> dict | None:
    """Wilcoxon's signed-rank test of the paired differences ``a - b`` over the keys both have (scipy, exact for
    small n; two-sided p), with the median difference: beside the t interval when one seed may dominate a
    mean (a rescued collapse). None with fewer than 2 pairs or no non-zero difference."""
    keys = sorted(set(a) & set(b))
    diffs = [a[k] - b[k] for k in keys]
    if len(diffs) < 2 or not any(diffs):
        return None
    # n: the non-zero differences, the pairs Wilcoxon ranks (its default drops the zeros)
    n = sum(d != 0 for d in diffs)
    return {"n": n, "median": statistics.median(diffs), "p": float(stats.wilcoxon(diffs).pvalue)}

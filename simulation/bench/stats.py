"""Paired comparisons: the same seed gives the same data and initial weights to every method, so methods
are compared seed by seed. A difference is reported with its 95 % confidence interval (Student's t over
the seeds), and called "not significant" when the interval contains 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom (scipy-free)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Paired:
    mean: float  # mean of the per-seed differences
    low: float  # 95 % interval
    high: float
    n: int  # seeds

    @property
    def significant(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, scale: float = 100.0, unit: str = "DSC") -> str:
        if self.n < 2:
            return f"{self.mean * scale:+.1f} {unit} (1 seed: no interval)"
        verdict = "" if self.significant else ", not significant"
        return f"{self.mean * scale:+.1f} {unit} [{self.low * scale:+.1f}, {self.high * scale:+.1f}]{verdict}"


def paired(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """``a - b`` over the seeds both have (seed -> score); None without a common seed."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] == a[s] and b[s] == b[s]]
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Paired(mean, math.nan, math.nan, 1)
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Paired(mean, mean - half, mean + half, len(diffs))

"""The results page's split of the seed-to-seed spread into evaluation (few scans) and training."""

import pytest

from simulation.bench.noise_md import noise_section, seeds_needed, spread


def _rec(method: str, seed: int, per_case: dict[str, dict[str, float]], mode: str) -> dict:
    cases = [
        {"case": c, "site": s, "round": 4, "mode": mode, "dice-et": None, "dice-tc": v, "dice-wt": v}
        for s, by_case in per_case.items()
        for c, v in by_case.items()
    ]
    return {"kind": "method", "scenario": "S2", "method": method, "seed": seed, "rounds": 4, "per_case": cases}


def _records(gap_per_case) -> list[dict]:
    recs = []
    for seed, shift in enumerate((0.0, 0.02, -0.01)):
        base = {"1": {"a": 0.5, "b": 0.9}, "2": {"c": 0.7, "d": 0.6, "e": 0.8}}
        other = {s: {c: v + shift + gap_per_case(c) for c, v in d.items()} for s, d in base.items()}
        uh = _rec("uharmony", seed, other, "gated")
        uh["per_case"] += _rec("uharmony", seed, base, "oracle")["per_case"]  # another mode: not the page's
        recs += [_rec("fedbn", seed, base, "oracle"), uh]
    return recs


def test_a_difference_the_same_on_every_scan_has_no_evaluation_spread():
    s = spread(_records(lambda c: 0.0), "S2", "uharmony", "fedbn", resamples=200)
    assert s["diffs"] == pytest.approx([0.0, 2.0, -1.0])  # DSC points, the page's score: sites, regions, cases
    assert s["sd"] == pytest.approx(1.5275, abs=1e-3) and max(s["ses"]) == pytest.approx(0.0, abs=1e-9)
    assert s["share"] == pytest.approx(0.0, abs=1e-9) and s["scans"] == [5, 5, 5]


def test_a_difference_that_varies_by_scan_shows_evaluation_spread():
    s = spread(_records(lambda c: 0.1 if c in ("a", "c") else -0.05), "S2", "uharmony", "fedbn", resamples=200)
    assert min(s["ses"]) > 1.0  # DSC points
    lines = noise_section(_records(lambda c: 0.1 if c == "a" else 0.0), resamples=50)
    assert any(line.startswith("| S2 | U-Harmony gated − FedBN |") for line in lines)
    assert noise_section([]) == [] and spread([], "S2", "uharmony", "fedbn") is None


def test_seeds_needed_for_an_interval_grows_with_the_spread():
    assert seeds_needed(0.5) == 2 or seeds_needed(0.5) <= 3
    assert seeds_needed(1.0) < seeds_needed(2.0) < seeds_needed(4.0)
    assert seeds_needed(1000.0) is None

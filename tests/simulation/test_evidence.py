"""The confirmatory comparison's machinery (simulation/evidence): statistics, estimands, rules, the page.

The statistics are checked against independent computations (scipy's own t test, a simulation where the
evaluation variance is known); the page is built from records made here, so these tests take seconds. One
end-to-end test trains at toy size through the product and scores every protocol.
"""

import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from simulation.evidence.cli import choose_lr, choose_variant, plan
from simulation.evidence.design import (
    CONFIRM_SEEDS,
    DATASET_FREE,
    DEFAULT,
    LRS,
    METHOD_PILOT_SEEDS,
    METHODS,
    PILOT_SEEDS,
    VARIANTS,
    conflict_cells,
    method_config,
)
from simulation.evidence.estimands import cell_values, estimands
from simulation.kit import stats

from .test_conventions import S3_CONFLICTS


def test_paired_interval_and_p_are_students_t_over_seeds():
    a = {s: 0.8 + 0.01 * s for s in range(10)}
    b = {s: 0.78 + 0.013 * s + (0.02 if s % 3 else -0.01) for s in range(10)}
    c = stats.paired(a, b)
    d = [a[s] - b[s] for s in range(10)]
    test = sps.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(0.95)
    assert c.n == 10 and c.mean == pytest.approx(np.mean(d))
    assert (c.low, c.high, c.p) == pytest.approx((low, high, test.pvalue))
    assert stats.paired({1: 0.5}, {2: 0.5}) is None


def test_equivalence_and_non_inferiority_are_decided_by_the_interval_not_the_point():
    near = {s: 0.5 + (0.004 if s % 2 else -0.004) for s in range(10)}
    base = dict.fromkeys(range(10), 0.5)
    c, ok = stats.tost(near, base, 0.01)
    assert ok and c.level == 0.90 and c.low > -0.01 and c.high < 0.01
    noisy = {s: 0.5 + (0.05 if s % 2 else -0.04) for s in range(10)}  # mean +0.005: inside the margin, interval not
    c, ok = stats.tost(noisy, base, 0.01)
    assert abs(c.mean) < 0.01 and not ok
    c, ok = stats.noninferior(noisy, base, 0.01)
    assert c.low < -0.01 and not ok
    c, ok = stats.noninferior({s: v + 0.03 for s, v in noisy.items()}, base, 0.01)
    assert ok


def test_holm_matches_the_step_down_definition():
    got = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": math.nan})
    assert got["a"] == pytest.approx(0.03) and got["c"] == pytest.approx(0.06) and got["b"] == pytest.approx(0.06)
    assert math.isnan(got["d"])


def test_the_pooled_within_seed_estimator_is_unbiased_where_the_bootstrap_was_not():
    """Known truth: per seed a training effect (SD 1), per case evaluation noise (SD 2), 2 cases at 3 sites. The
    evaluation variance of a seed's estimate is 4 / 2 / 3 = 0.667; over 300 simulated studies of 10 seeds the
    estimator's mean must be within 10 % of it (a bootstrap over 2 cases gives half: the earlier page's bias)."""
    rng = random.Random(0)
    got = []
    for _ in range(300):
        per_case = {}
        for seed in range(10):
            t = rng.gauss(0, 1)
            per_case[seed] = {site: [t + rng.gauss(0, 2) for _ in range(2)] for site in "abc"}
        got.append(stats.eval_share(per_case)["eval_variance"])
    assert statistics.fmean(got) == pytest.approx(4 / 2 / 3, rel=0.1)


def _case(site, mode, **dice):
    rec = {"case": f"c{random.random()}", "site": site, "mode": mode}
    for region, (d, truth) in dice.items():
        rec |= {f"dice-{region}": d, f"truth-{region}": truth, f"lesion-{region}": d}
    return rec


def test_estimands_average_cases_then_cells_and_read_empty_truth_both_ways():
    cases = [
        _case("2", "routed", tc=(0.6, 10), wt=(0.8, 30), et=(1.0, 0)),
        _case("2", "routed", tc=(0.8, 10), wt=(0.6, 30), et=(0.0, 0)),
        _case("5", "routed", tc=(0.5, 5), wt=(0.9, 9), et=(0.0, 0), net=(0.3, 4)),
        _case("5", "other", tc=(0.0, 5), wt=(0.0, 9), et=(0.0, 0)),
    ]
    cells = cell_values(cases, "routed")
    assert cells[("2", "TC")] == pytest.approx(0.7) and cells[("5", "NET")] == pytest.approx(0.3)
    e = estimands(cases, "routed", "S3")
    assert e["conflict"] == pytest.approx((0.7 + 0.7 + 0.5) / 3)  # 2 TC, 2 WT, 5 TC
    assert e["twin"] == pytest.approx(0.7) and e["net"] == pytest.approx(0.3)
    assert e["all"] == pytest.approx(statistics.fmean([0.5, 0.7, 0.7, 0.0, 0.5, 0.9]))
    assert math.isnan(estimands(cases, "routed", "S3")["all_nonempty"]) is False
    assert ("2", "ET") not in cell_values(cases, "routed", "nonempty")  # empty truth left out


def test_the_conflict_cells_are_read_off_the_generator():
    expected = {(str(site + 1), r) for site, regions in S3_CONFLICTS.items() for r in regions}
    assert set(conflict_cells()) == expected


def _pilot_record(method, lr, value):
    cases = [_case(s, DATASET_FREE[method], et=(value, 5), tc=(value, 5), wt=(value, 5)) for s in "12345"]
    return {
        "kind": "train",
        "stage": "pilot-lr",
        "scenario": "S3",
        "method": method,
        "lr": lr,
        "seed": 5,
        "cases": cases,
    }


def test_learning_rate_rule_takes_the_best_rate_and_5e3_on_ties():
    recs = [
        _pilot_record(m, lr, 0.5 + (0.1 if (m, lr) == ("fedavg", 1e-2) else 0.0)) for m in METHODS["S3"] for lr in LRS
    ]
    chosen = choose_lr(recs)
    assert chosen["fedavg"] == 1e-2 and all(v == 5e-3 for m, v in chosen.items() if m != "fedavg")
    with pytest.raises(SystemExit, match="no job for fedbn"):
        choose_lr([r for r in recs if r["method"] != "fedbn"])


def test_variant_rule_needs_one_dsc_on_s3_and_no_loss_on_s0():
    def rec(m, scen, seed, value):
        cases = [_case(s, DATASET_FREE[m], et=(value, 5), tc=(value, 5), wt=(value, 5)) for s in "12345"]
        return {"kind": "train", "stage": "pilot-method", "scenario": scen, "method": m, "seed": seed, "cases": cases}

    def records(s3_gain, s0_loss):
        out = []
        for m in ("uharmony", *VARIANTS):
            gain = s3_gain if m == "uharmony-drop" else 0.0
            out += [rec(m, "S3", s, 0.6 + gain) for s in METHOD_PILOT_SEEDS]
            out.append(rec(m, "S0", METHOD_PILOT_SEEDS[0], 0.9 - (s0_loss if m == "uharmony-drop" else 0.0)))
        return out

    assert choose_variant(records(0.02, 0.0)) == "uharmony-drop"
    assert choose_variant(records(0.005, 0.0)) is None  # less than 1 DSC
    assert choose_variant(records(0.02, 0.02)) is None  # costs the control


def test_the_plans_keep_pilot_and_confirmatory_seeds_apart():
    confirm = plan("confirm", DEFAULT)
    assert len(confirm) == len(CONFIRM_SEEDS) * (len(METHODS["S3"]) + len(METHODS["S0"]))
    pilots = [c for stage in ("pilot-lr", "pilot-parity", "pilot-method") for _, c in plan(stage, DEFAULT)]
    assert {c[4] for c in pilots} <= set(PILOT_SEEDS) and not {c[4] for c in pilots} & set(CONFIRM_SEEDS)
    assert method_config("uharmony-coef") == {"strategy": "uharmony", "site-local": "stats+coefficients"}
    over = DEFAULT.overrides("S3", "uharmony-drop", 100)
    assert over["strategy"] == "uharmony" and over["expert-dropout"] == 0.3 and over["synth-val-cases"] == 20


@pytest.mark.slow
def test_every_protocol_is_scored_end_to_end_at_toy_size(tmp_path, monkeypatch):
    """Through the product (in-process transport, 6 mm, 2 rounds): each method's records carry the protocol's
    modes, a routed record for every validation case, and the page is written from them."""
    from simulation.evidence.cli import main

    monkeypatch.setenv("UHARMONY_CACHE", str(tmp_path / "cache"))
    from simulation.evidence import cli, design

    small = {**design.METHODS, "S3": ("fedavg", "fedbn", "uharmony", "local"), "S0": ()}
    monkeypatch.setattr(cli, "METHODS", small)
    monkeypatch.setattr(cli, "LRS", (5e-3,))
    out = tmp_path / "ev"
    assert main(["--quick", "--out", str(out), "--workers", "1", "--stage", "pilot-lr"]) == 0
    from uharmony.files import read_jsonl

    recs = {r["method"]: r for r in read_jsonl(out / "results.jsonl") if r.get("kind") == "train"}
    modes = {m: {c["mode"] for c in r["cases"]} for m, r in recs.items()}
    # issue 30 item 4: the whole-tumour-only site's SuperNode absent for a whole run; its scans still scored
    assert main(["--quick", "--out", str(out), "--workers", "1", "--stage", "ablate-site", "--seeds", "5"]) == 0
    ablated = {r["method"]: r for r in read_jsonl(out / "results.jsonl") if r["job"].startswith("ablate-site/")}
    assert set(ablated) == {"fedavg", "uharmony"} and ablated["uharmony"]["without"] == ["4"]
    uh, fa = ablated["uharmony"]["cases"], ablated["fedavg"]["cases"]
    assert {c["site"] for c in uh if c["mode"] == "own-gated"} == {c["site"] for c in fa if c["mode"] == "shared"}
    assert {c["site"] for c in uh if c["mode"] == "own-gated"} == set("1235")
    routed = [c for c in uh if c["mode"] == "routed"]
    assert "4" in {c["site"] for c in routed} and {c["route"] for c in routed} <= set("1235")
    assert ablated["uharmony"]["router_accuracy"]["4"] == 0.0
    # the absent site's scans as an unseen site's (issue 30 item 5): as shipped, and U-Harmony calibrated
    unseen = {(c["mode"], m) for m, r in ablated.items() for c in r["cases"] if c["site"] == "4"}
    assert unseen == {("unseen", "fedavg"), ("unseen", "uharmony"), ("unseen-per-scan", "uharmony"),
                      ("unseen-calibrated", "uharmony"), ("routed", "uharmony"), ("mean", "uharmony")}  # fmt: skip
    arms = {mode: {c["case"]: c for c in uh if c["mode"] == mode} for mode in ("unseen", "unseen-calibrated")}
    assert set(arms["unseen"]) == set(arms["unseen-calibrated"])
    assert all(c["dice-wt"] is not None for c in arms["unseen-calibrated"].values())
    assert modes == {
        "fedavg": {"shared"},
        "fedbn": {"own", "routed", "mean"},
        "uharmony": {"oracle", "own-gated", "routed", "mean"},
        "local": {"own", "routed"},
    }
    for m in ("fedbn", "uharmony", "local"):
        own = [c for c in recs[m]["cases"] if c["mode"] == ("own-gated" if m == "uharmony" else "own")]
        routed = [c for c in recs[m]["cases"] if c["mode"] == "routed"]
        assert sorted(c["case"] for c in own) == sorted(c["case"] for c in routed)
        assert all(c["route"] in "12345" for c in routed)
        assert set(recs[m]["router_accuracy"]) == set("12345")
    page = (out / "results.md").read_text()
    assert "S3 with site 4 − without it" in page and "Site 4 as an unseen site" in page
    assert "Learning rate" in page and "Not run yet (`uharmony-evidence --stage confirm`)" in page

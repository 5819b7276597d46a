"""The confirmatory comparison's machinery (simulation/evidence): statistics, estimands, rules, the page.

The statistics are checked against independent computations (scipy's own t test, a simulation where the
evaluation variance is known); the page is built from records made here, so these tests take seconds. One
end-to-end test trains at toy size through the product and scores every protocol.
"""

import math
import random
import statistics
from pathlib import Path

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


def test_the_sites_section_reads_each_sites_own_cells_in_each_methods_dataset_free_mode():
    from simulation.evidence.report_sites import sites_section

    records = []
    for seed in range(3):
        for method, mode, d3, d4 in (("uharmony", "routed", 0.80, 0.90), ("local", "routed", 0.85, 0.88),
                                     ("fedavg", "shared", 0.70 + 0.01 * seed, 0.60)):  # fmt: skip
            cases = [
                _case("3", mode, et=(d3, 5), tc=(d3, 5), wt=(d3 + 0.1, 9)),
                _case("3", "oracle", et=(0.0, 5), tc=(0.0, 5), wt=(0.0, 9)),  # another mode: not read
                _case("4", mode, wt=(d4, 9), et=(None, None), tc=(None, None)),  # whole tumour only
                _case("1", mode, wt=(0.1, 9)),
            ]
            records.append({"kind": "train", "stage": "confirm", "scenario": "S3", "method": method, "seed": seed,
                            "cases": cases})  # fmt: skip
    text = "\n".join(sites_section(records))
    # site 3: (0.80 + 0.80 + 0.90) / 3 = 83.3; site 4: its WT only
    assert "| U-Harmony | 83.3 ± 0.0 | 90.0 ± 0.0 |" in text and "| local | 88.3 ± 0.0 | 88.0 ± 0.0 |" in text
    assert "site 3 (metastasis, no T2): U-Harmony − local -5.0 DSC" in text
    assert "site 4 (meningioma, no T1, whole tumour only): U-Harmony − FedAvg +30.0 DSC" in text
    assert sites_section([]) == []


def test_the_site_ablation_pairs_every_confirmatory_seed_and_method_with_the_site_absent():
    jobs = plan("ablate-site", DEFAULT)
    assert len(jobs) == len(CONFIRM_SEEDS) * 2 and len({k for k, _ in jobs}) == len(jobs)
    assert {(c[2], c[3]) for _, c in jobs} == {("S3", "fedavg"), ("S3", "uharmony")}
    assert sorted({c[4] for _, c in jobs}) == list(CONFIRM_SEEDS) and all(c[6] == ("4",) for _, c in jobs)
    assert not {k for k, _ in jobs} & {k for k, _ in plan("confirm", DEFAULT)}
    assert [c[4] for _, c in plan("ablate-site", DEFAULT, seeds=[101])] == [101, 101]


def test_the_ablation_section_contrasts_the_other_sites_cells_with_and_without_the_site():
    from simulation.evidence.report_sites import ablation_section

    assert ablation_section([]) == []
    records = []
    for i, seed in enumerate(range(100, 105)):
        runs = [("confirm", 0.0, [])]
        if seed < 104:  # seed 104 has no ablation run: not paired, not read
            runs += [("ablate-site", 0.02 + 0.01 * (seed % 2), ["4"]), ("ablate-site", 0.5, ["3"])]  # another site
        for stage, shift, without in runs:
            for method, mode in (("uharmony", "routed"), ("fedavg", "shared")):
                base = (0.80 if method == "uharmony" else 0.70) - 0.05 * i  # seeds differ far more than the pairs
                cases = [_case(site, mode, et=(base - shift, 5), tc=(base - shift, 5), wt=(0.9, 9)) for site in "1235"]
                cases += [
                    _case("4", mode, wt=(0.1 if stage == "ablate-site" else 0.9, 9)),  # the ablated site: not read
                    _case("1", "oracle", et=(0.0, 5), tc=(0.0, 5), wt=(0.0, 9)),  # another mode: not read
                ]
                records.append({"kind": "train", "stage": stage, "scenario": "S3", "method": method,
                                "seed": seed, "without": without, "cases": cases})  # fmt: skip
    text = "\n".join(ablation_section(records))
    # with - without: +2 at even seeds, +3 at odd, paired over seeds 100-103: +2.5 [+1.6, +3.4]
    assert "| U-Harmony | ET, TC | 72.5 ± 6.5 | 70.0 ± 6.7 | +2.5 DSC [+1.6, +3.4] | 4 |" in text
    assert "| FedAvg | WT | 90.0 ± 0.0 | 90.0 ± 0.0 | +0.0 DSC" in text
    assert "lower bound ≥ −1): **met** (interim: 4 of 10 seeds)" in text


def test_the_unseen_section_reads_the_absent_sites_cells_per_arm_and_decides_by_the_bounds():
    from simulation.evidence.report_unseen import unseen_section

    assert unseen_section([]) == []
    records = []
    for seed in range(100, 110):
        wobble = 0.01 * (seed % 3)
        arms = {
            "uharmony": {
                "unseen-calibrated": 0.70 + wobble,
                "unseen-per-scan": 0.69,
                "unseen": 0.60,
                "routed": 0.65,
                "mean": 0.66,
            },  # fmt: skip
            "fedavg": {"unseen": 0.72 + wobble},  # 2 DSC better than calibrated U-Harmony at every seed
        }
        for method, modes in arms.items():
            cases = [_case("4", mode, wt=(d, 9), et=(None, None), tc=(None, None)) for mode, d in modes.items()]
            cases.append(_case("1", "unseen-calibrated", wt=(0.0, 9)))  # another site: not read
            records.append({"kind": "train", "stage": "ablate-site", "scenario": "S3", "method": method,
                            "seed": seed, "without": ["4"], "cases": cases})  # fmt: skip
    text = "\n".join(unseen_section(records))
    assert "| FedAvg | 73.0 ± 0.8 | -2.0 DSC [-2.0, -2.0] | 10 |" in text
    assert "| U-Harmony, initial statistics | 60.0 ± 0.0 | +11.0 DSC [+10.4, +11.6] | 10 |" in text
    assert "| U-Harmony, each scan's own statistics (no calibration) | 69.0 ± 0.0 | +2.0 DSC [" in text
    assert "| U-Harmony, the sites' mean statistics | 66.0 ± 0.0 | +5.0 DSC [" in text
    assert "calibrated U-Harmony − FedAvg -2.0 DSC [-2.0, -2.0], lower bound ≥ −1: **missed**\n" in text
    assert "calibration − each scan's own statistics +2.0 DSC [+1.4, +2.6], interval above 0: **met**\n" in text


def test_an_unseen_site_is_scored_as_shipped_then_each_scan_alone_then_calibrated_on_its_own_scans(monkeypatch):
    from types import SimpleNamespace

    import torch

    from simulation.evidence import unseen

    calls = []
    val = [{"image": "v1", "present": "p"}, {"image": "v2", "present": "p"}]
    data = SimpleNamespace(val=val, train=[{"image": "t1", "present": "p"}])
    job = SimpleNamespace(model=torch.nn.Sequential(torch.nn.Identity()), site=SimpleNamespace(name="4"), data=data,
                          device="cpu")  # fmt: skip

    def evaluate(model, items, domain, roi, device, per_case, autocast_dtype):
        calls.append(("score", [it["image"] for it in items]))
        per_case += [{"case": it["image"], "dice-wt": 0.5, "run": "x", "round": 2} for it in items]

    monkeypatch.setattr(unseen, "UHarmonyNorm", torch.nn.Identity)  # the model counts as a U-Harmony one
    monkeypatch.setattr(unseen, "site_view", lambda run_dir, pid, cfg: job if pid == 3 else None)
    monkeypatch.setattr(unseen, "evaluate_cases", evaluate)
    monkeypatch.setattr(unseen, "estimate_site_statistics", lambda m, scans, roi, *, device: calls.append(
        ("estimate", [image for image, _ in scans])))  # fmt: skip
    got = unseen.unseen_cases(Path("run"), SimpleNamespace(patch_size=16, autocast_dtype=None), [3])
    assert calls == [
        ("score", ["v1", "v2"]),  # as shipped
        ("estimate", ["v1"]), ("score", ["v1"]), ("estimate", ["v2"]), ("score", ["v2"]),  # each scan alone
        ("estimate", ["t1"]), ("score", ["v1", "v2"]),  # the site's unlabeled training scans
    ]  # fmt: skip
    assert [(r["mode"], r["case"]) for r in got] == [
        ("unseen", "v1"), ("unseen", "v2"), ("unseen-per-scan", "v1"), ("unseen-per-scan", "v2"),
        ("unseen-calibrated", "v1"), ("unseen-calibrated", "v2"),
    ]  # fmt: skip
    assert all(r["site"] == "4" and "run" not in r and "round" not in r for r in got)


def test_the_rotation_leaves_each_other_site_out_on_its_seeds_and_pools_only_complete_seeds():
    from simulation.evidence.design import ROTATED_SITES, ROTATION_SEEDS
    from simulation.evidence.report_unseen import rotation_section

    jobs = plan("rotate-unseen", DEFAULT)
    assert len(jobs) == len(ROTATION_SEEDS) * len(ROTATED_SITES) * 2 and len({k for k, _ in jobs}) == len(jobs)
    assert {c[6] for _, c in jobs} == {("1",), ("2",), ("3",), ("5",)} and {c[4] for _, c in jobs} == {100, 101, 102}
    assert rotation_section([]) == []
    records = []
    for seed in (100, 101, 102):
        for site in "12345":
            if seed == 102 and site == "3":
                continue  # seed 102 misses a rotation: not pooled
            stage = "ablate-site" if site == "4" else "rotate-unseen"
            for method, modes in (("fedavg", {"unseen": 0.70}), ("uharmony", {"unseen-calibrated": 0.75,
                                  "unseen-per-scan": 0.73 + 0.01 * (seed - 100), "unseen": 0.5})):  # fmt: skip
                bump = 0.05 * int(site)  # sites differ; every arm alike
                cases = [_case(site, mode, et=(d + bump, 5), tc=(d + bump, 5), wt=(d + bump, 9), net=(0.0, 3))
                         for mode, d in modes.items()]  # fmt: skip
                cases.append(_case("1" if site != "1" else "2", "unseen", wt=(0.0, 9)))  # a training site: not read
                records.append({"kind": "train", "stage": stage, "scenario": "S3", "method": method, "seed": seed,
                                "without": [site], "cases": cases})  # fmt: skip
    text = "\n".join(rotation_section(records))
    # columns: calibrated, each scan's own, FedAvg, initial; site 3: + 0.15 (NET left out), seeds 100-101;
    # pooled over sites 1-5 (mean bump 0.15), seeds 100-101 only
    assert "| 3 | 90.0 ± 0.0 | 88.5 ± 0.7 | 85.0 ± 0.0 | 65.0 ± 0.0 |" in text
    assert "| 4 | 95.0 ± 0.0 | 94.0 ± 1.0 | 90.0 ± 0.0 | 70.0 ± 0.0 |" in text  # three seeds
    assert "| **pooled** | 90.0 ± 0.0 | 88.5 ± 0.7 | 85.0 ± 0.0 | 65.0 ± 0.0 |" in text
    assert "FedAvg +5.0 DSC [+5.0, +5.0], lower bound ≥ −1: **met** (interim: 2 of 3 seeds)" in text
    assert "each scan's own statistics +1.5 DSC [-4.9, +7.9], not significant, interval above 0: **missed**" in text


def test_the_side_study_sets_the_spread_over_initial_weights_beside_the_confirmatory_spread():
    from simulation.evidence.report_spread import side_section

    def record(stage, method, seed, value, init=None):
        cases = [_case(site, DATASET_FREE[method], **{region.lower(): (value, 9)}) for site, region in conflict_cells()]
        extra = {"init-seed": init} if init is not None else {}
        return {"kind": "train", "stage": stage, "scenario": "S3", "method": method, "seed": seed, "extra": extra,
                "cases": cases}  # fmt: skip

    inits = {300: (0.76, 0.81), 301: (0.77, 0.86), 302: (0.78, 0.87)}
    records = [
        record("side", m, 100, v[i], init) for init, v in inits.items() for i, m in enumerate(("fedavg", "uharmony"))
    ]
    confirm = {100: (0.78, 0.87), 101: (0.72, 0.74), 102: (0.78, 0.85), 103: (0.75, 0.87)}
    records += [record("confirm", m, s, v[i]) for s, v in confirm.items() for i, m in enumerate(("fedavg", "uharmony"))]
    text = "\n".join(side_section(records))
    assert "| 301 | 77.0 | 86.0 | +9.0 |" in text
    sa, sb = statistics.stdev([0.81, 0.86, 0.87]), statistics.stdev([0.87, 0.74, 0.85, 0.87])
    ratio = (sa / sb) ** 2
    low, high = ratio / sps.f.ppf(0.975, 2, 3), ratio / sps.f.ppf(0.025, 2, 3)
    assert f"| U-Harmony | {100 * sa:.1f} (3) | {100 * sb:.1f} (4) | {ratio:.2f} [{low:.2f}, {high:.2f}] |" in text
    assert side_section([r for r in records if r["stage"] == "confirm"]) == []


def test_the_plateau_table_names_a_method_that_doubling_moves_by_more_than_two_dsc():
    from simulation.evidence.report_pilots import pilot_section

    def record(stage, method, value, **extra):
        cases = [_case(site, DATASET_FREE[method], et=(value, 5), tc=(value, 5), wt=(value, 9)) for site in "12345"]
        return {"kind": "train", "stage": stage, "scenario": "S3", "method": method, "seed": 5, "lr": 5e-3,
                "extra": extra, "cases": cases}  # fmt: skip

    records = [
        record("pilot-lr", "fedavg", 0.787, lr=5e-3),
        record("pilot-plateau", "fedavg", 0.799),
        record("pilot-lr", "fedbn", 0.833, lr=5e-3),
        record("pilot-plateau", "fedbn", 0.921),
    ]
    text = "\n".join(pilot_section(records, DEFAULT))
    assert "| FedAvg | 78.7 | 79.9 | +1.2 | yes |" in text and "| FedBN | 83.3 | 92.1 | +8.8 | **no** |" in text

"""The evidence page's sections from made-up records (simulation/evidence/report_*): the sites, the site
ablation and the unseen site (issue 30 items 4 and 5), the side study and the plateau pilot. Seconds."""

import statistics
from pathlib import Path

from scipy import stats as sps

from simulation.evidence.cli import plan
from simulation.evidence.design import CONFIRM_SEEDS, DATASET_FREE, DEFAULT, conflict_cells

from .test_evidence import _case


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

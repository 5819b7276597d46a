"""The UMS-Rep evidence: its plan, label-free views, and the report's verdicts (on made-up results)."""

import json

import pytest

from simulation.label_fraction import label_free_view, pick_labelled
from simulation.umsrep_bench.jobs import DEFAULT, QUICK, plan
from simulation.umsrep_bench.report import write_report
from uharmony.data import load_federation


def test_every_fine_tuning_starts_from_a_pretraining_the_plan_runs_first():
    for size in (DEFAULT, QUICK):
        pre, fine = plan(size)
        made = {(seed, sites) for _, seed, sites in pre}
        for _, seed, fraction, arm, _, _ in fine:
            if arm == "all" or (arm == "labelled" and fraction >= 1):
                assert (seed, "all") in made
            elif arm == "labelled":
                assert (seed, f"labelled-{fraction:g}") in made
        assert len(set(fine)) == len(fine)
    seeds = {c[1] for c in plan(DEFAULT)[1] if c[2] == 0.25 and c[3] == "labelled"}
    assert len(seeds) >= 5  # the paired targets have five seeds


def test_labelled_sites_are_drawn_per_seed_and_nested():
    names = ["1", "2", "3", "4", "5"]
    assert len(pick_labelled(names, 0.125, 0)) == 1 and len(pick_labelled(names, 0.25, 0)) == 2
    for seed in range(4):
        small, large = pick_labelled(names, 0.25, seed), pick_labelled(names, 0.5, seed)
        assert set(small) <= set(large)
    assert pick_labelled(names, 1.0, 3) == names
    with pytest.raises(ValueError):
        pick_labelled(names, 0.0, 0)


def test_a_label_free_view_withholds_labels_and_nothing_else(tiny_federation, tmp_path):
    view = label_free_view(tiny_federation, tmp_path / "view", ["2"])
    fed, orig = load_federation(view), load_federation(tiny_federation)
    assert [s.labelled for s in fed.sites] == [False, True, False, False]
    for a, b in zip(fed.sites, orig.sites):
        assert [c.images for c in a.cases] == [c.images for c in b.cases]
        assert all(c.label is None for c in a.cases) == (not a.labelled)
    with pytest.raises(ValueError, match="no sites"):
        label_free_view(tiny_federation, tmp_path / "bad", ["9"])


def _fine(seed, fraction, arm, final, plan="full", tasks="", rounds=(4, 8)):
    curve = {str(r): final * r / rounds[-1] for r in rounds}
    return {
        "kind": "finetune", "seed": seed, "fraction": fraction, "arm": arm, "plan": plan, "tasks": tasks,
        "labelled": ["1", "2"], "curve": curve, "presence": {}, "site_seconds": 100.0, "bytes_per_round": 10,
        "full_model_bytes": 1000, "sites_per_round": 2,
    }  # fmt: skip


def test_the_report_states_each_target_with_its_number(tmp_path):
    results = []
    label_free_gain = [0.045, -0.015, 0.045, -0.015, 0.015]  # +1.5 DSC on average, interval [-2.2, +5.2]
    for seed in range(5):
        results += [
            _fine(seed, 0.25, "scratch", 0.50),
            _fine(seed, 0.25, "all", 0.56 + 0.01 * seed),
            _fine(seed, 0.25, "labelled", 0.56 + 0.01 * seed - label_free_gain[seed]),
            _fine(seed, 1.0, "scratch", 0.70),
            _fine(seed, 1.0, "all", 0.695),
        ]
    denoise = [
        {"site": "1", "psnr-noisy-1": 30.0, "psnr-denoised-1": 34.0},
        {"site": "2", "psnr-noisy-1": 30.0, "psnr-denoised-1": 32.0},
    ]
    results.append({"kind": "pretrain", "seed": 0, "sites": "all", "site_seconds": 50.0, "rounds": 2, "curve": []})
    results[-1]["denoise"] = denoise
    results.append(_fine(0, 0.25, "all", 0.5, "independent", "presence"))
    doc = write_report(results, {"size": {"name": "made-up"}}, tmp_path / "umsrep.md", tmp_path)
    text = doc.read_text()
    assert "pretrained on all ≥ scratch + 3 DSC, interval above 0: met (+8.0 DSC" in text
    assert "adds ≥ 1 DSC: **missed** (+1.5 DSC [-2.2, +5.2], not significant)" in text
    assert "no harm (≥ scratch − 1 DSC): met (-0.5 DSC" in text
    assert "at every site: **missed** (lowest site: +2.00 dB)" in text
    assert "≤ 2 % of the model's bytes per round and site: met (0.50 %)" in text
    assert (tmp_path / "umsrep" / "label_efficiency.png").stat().st_size > 1000
    json.dumps(results)  # the records are what results.jsonl holds

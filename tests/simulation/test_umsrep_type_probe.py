"""The tumour-type probe of UMS-Rep's second task (S4): its scoring, its site-only control, a tiny run."""

import json

import pytest
import torch

from simulation.umsrep_bench import type_probe
from simulation.umsrep_bench.type_probe import case_scores, macro_scores, page, site_control

TYPES = {0: "glioma", 1: "glioma", 2: "metastasis", 3: "metastasis", 4: "meningioma", 5: "meningioma"}


def test_case_level_scores_average_each_cases_patches():
    assert case_scores(torch.tensor([1.0, 3.0, -2.0]), torch.tensor([7, 7, 9])) == {7: 2.0, 9: -2.0}


def test_separated_scores_give_auroc_1_and_reversed_ones_0():
    right = {t: {c: float(TYPES[c] == t) for c in TYPES} for t in set(TYPES.values())}
    got = macro_scores(right, TYPES)
    assert got["macro_auroc"] == 1.0 and got["balanced_accuracy"] == 1.0 and len(got["per_type"]) == 3
    wrong = {t: {c: -v for c, v in by.items()} for t, by in right.items()}
    assert macro_scores(wrong, TYPES)["macro_auroc"] == 0.0


def test_the_site_control_reads_the_type_from_the_site_only_where_the_site_tells_it():
    types = {i: ("glioma" if i < 10 else "metastasis") for i in range(20)}
    one_type_each = site_control(types, {i: "A" if i < 10 else "B" for i in range(20)}, seed=0)
    assert one_type_each["macro_auroc"] == 1.0
    mixed = site_control(types, {i: "A" if i % 2 else "B" for i in range(20)}, seed=0)
    assert mixed["macro_auroc"] < 0.75  # each site holds both types equally: the site says little


def test_the_page_reports_each_arm_the_paired_differences_and_the_target():
    recs = [
        {"seed": s, "arm": a, "macro_auroc": v + 0.01 * s, "balanced_accuracy": 0.5, "machine": "m"}
        | {"per_type": {"glioma": v, "pediatric": 1.0}}
        | ({"patch_macro_auroc": 0.7} if a != "site" else {})
        for s in range(3)
        for a, v in (("site", 0.7), ("random", 0.6), ("denoise", 0.8))
    ]
    text = page(recs)
    assert "| denoise | 0, 1, 2 | 81.0 [" in text and "denoise − random: +20.0 [+20.0, +20.0]" in text
    assert "denoise − site: +10.0" in text
    assert "on the mean over seeds: **missed** (0.810; its 95 % lower bound 0.785 does not clear 0.9)" in text
    assert "| arm | glioma ×100 | pediatric ×100 |" in text and "| random | 60.0 | 100.0 |" in text


def test_the_site_control_and_the_probes_hold_out_the_same_cases():
    from simulation.umsrep_bench.probe import fold_splits

    per_case = 3
    cases = torch.arange(12).repeat_interleave(per_case)  # patches numbered by case, as the probe reads them
    by_patch = [set(cases[test].tolist()) for test, _ in fold_splits(len(cases), 5, 4, cases)]
    by_case = [set(test.tolist()) for test, _ in fold_splits(12, 5, 4, torch.arange(12))]
    assert by_patch == by_case and set().union(*by_case) == set(range(12))


@pytest.mark.slow
def test_a_tiny_type_probe_runs_every_arm_on_s4(tmp_path, monkeypatch):
    monkeypatch.setenv("UHARMONY_CACHE", str(tmp_path / "cache"))
    tiny = {"synth-cases-per-site": 2, "synth-spacing": 6.0, "spacing": 6.0, "patch-size": 16, "filters": "8,16,32"}
    real = type_probe.run_seed
    monkeypatch.setattr(
        type_probe, "run_seed", lambda seed, arm, steps, per_case: real(seed, arm, steps, per_case, tiny)
    )
    out, page_md = tmp_path / "out", tmp_path / "page.md"
    args = ["--seeds", "0", "--steps", "2", "--patches", "2", "--out", str(out), "--page", str(page_md)]
    assert type_probe.main(args) == 0
    recs = [json.loads(x) for x in (out / "type_probe.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in recs] == ["site", "random", "denoise"]
    assert all(r["cases"] == 16 and sum(r["type_counts"].values()) == 16 for r in recs)
    assert all(0.0 <= r["macro_auroc"] <= 1.0 and len(r["per_type"]) >= 3 for r in recs)
    assert recs[2]["steps"] == 2 and recs[1]["steps"] == 0 and recs[1]["patches"] == 32
    assert "| denoise | 0 |" in page_md.read_text()
    assert type_probe.main(args) == 0  # resumed: nothing new
    assert len((out / "type_probe.jsonl").read_text().splitlines()) == 3
    assert type_probe.main([*args[:3], "3", *args[4:]]) == 0  # other phase-P steps: the denoise arm runs again
    recs = [json.loads(x) for x in (out / "type_probe.jsonl").read_text().splitlines()]
    assert [(r["arm"], r["steps"]) for r in recs[3:]] == [("denoise", 3)]

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
    assert "no harm (lower bound ≥ scratch − 1 DSC): met (-0.5 DSC" in text
    assert "at every site (against its own scans): **missed** (lowest site: +2.00 dB)" in text
    assert "≤ 2 % of the model's bytes per round and site: met (0.50 %)" in text
    assert (tmp_path / "umsrep" / "label_efficiency.png").stat().st_size > 1000
    json.dumps(results)  # the records are what results.jsonl holds


def test_design_v2_plans_ten_seeds_a_compute_matched_arm_and_a_scratch_control_per_plan(monkeypatch):
    from simulation.umsrep_bench import jobs

    pre, fine = plan(jobs.V2)
    paired = {c[1] for c in fine if c[2] == 0.25 and c[3] == "all" and c[4] == "full"}
    assert paired == set(range(10)) and jobs.V2.lr == 5e-3 and jobs.V2.reference
    assert {c[1] for c in fine if c[3] == jobs.MATCHED} == set(range(10))
    assert not any(c[3] == jobs.MATCHED and c[2] >= 1 for c in fine)  # with every site labelled there is none
    controls = {c[4] for c in fine if c[3] == "scratch" and c[5] == "presence" and c[1] == 0}
    assert controls == set(jobs.STRATEGIES)
    assert {c[1] for c in fine if c[0] == "unseen"} == {0, 1, 2}
    monkeypatch.setattr(jobs, "_site_names", lambda size, seed: ["1", "2", "3", "4", "5"])
    # phase P: 60 rounds x 25 steps x 5 sites; two labelled sites at 25 steps a round: 150 more rounds
    assert jobs.matched_rounds(jobs.V2, 0, 2) == 150 and jobs.matched_rounds(DEFAULT, 0, 5) == 20
    assert DEFAULT.base(0).get("synth-reference") is None and jobs.V2.base(0)["synth-reference"] is True


def test_the_denoising_section_reads_gains_against_the_reference():
    from simulation.umsrep_bench.report_denoising import denoising_section

    site = {"site": "1", "intrinsic-noise": 0.2, "psnr-clean-noisy-s": 20.0, "psnr-clean-denoised-s": 21.0}
    for i, (noisy, den) in enumerate(((19.0, 18.5), (17.0, 20.5), (15.0, 19.0))):
        site.update({f"psnr-clean-noisy-{i}": noisy, f"psnr-clean-denoised-{i}": den,
                     f"psnr-noisy-{i}": noisy + 1, f"psnr-denoised-{i}": den})  # fmt: skip
    text = "\n".join(denoising_section([{"kind": "pretrain", "sites": "all", "denoise": [site]}], {}))
    assert "| 1 | 0.20 | -0.50 | +3.50 | +4.00 | +1.00 | 3.01 |" in text
    assert "against the reference: met (lowest: site 1, +3.50 dB); no loss at σ 0.1: **missed**" in text


def test_after_phase_f_every_site_is_scored_the_label_free_ones_with_their_own_entries(umsrep_runs, tiny_federation):
    """Design v2's fixed population: the run saw a view with three sites' labels withheld; the scorer reads
    the labelled federation and scores all four sites dataset-free. For the labelled site it must give what the
    run itself recorded at its last evaluation (same model, entries, scans and gate)."""
    from simulation.kit.runs import score_every_site
    from tests.conftest import tiny_overrides
    from uharmony.federation.config import RunConfig
    from uharmony.files import read_jsonl

    run_dir = umsrep_runs["finetune"]
    over = tiny_overrides(tiny_federation, run_dir, num_server_rounds=2, finetune="independent-head", tasks="presence")
    scored = score_every_site(run_dir, RunConfig.from_flwr({k.replace("_", "-"): v for k, v in over.items()}))
    assert sorted(scored) == ["1", "2", "3", "4"]
    assert all(s["entries"] == "saved" and s["cases"] >= 1 for s in scored.values())  # label-free: recalibrated
    assert all(v is None or 0.0 <= v <= 1.0 for s in scored.values() for v in s["cells"].values())
    assert all(any(v is not None for v in s["cells"].values()) for s in scored.values())
    recs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "dice" in r and r.get("mode") == "gated"]
    last = max(r["round"] for r in recs)
    own = {r["region"]: r["dice"] for r in recs if r["round"] == last and r["site"] == "1" and "phase" not in r}
    assert own and all(scored["1"]["cells"][k] == pytest.approx(v, abs=1e-4) for k, v in own.items() if v == v)
    assert not any(r["site"] != "1" for r in recs)  # the run scored its labelled site only


def test_with_fixed_population_records_the_targets_are_read_on_every_sites_scans(tmp_path):
    def fixed(values):  # five sites; site 4 annotates the whole tumour only
        cells = [{"ET": v, "TC": v, "WT": v} for v in values]
        cells[3] = {"ET": None, "TC": None, "WT": values[3]}
        return {str(i + 1): {"cells": c, "cases": 2, "entries": "saved"} for i, c in enumerate(cells)}

    results = []
    for seed in range(4):
        for arm, base in (("scratch", 0.60), ("all", 0.78), ("labelled", 0.70)):
            rec = _fine(seed, 0.25, arm, 0.95)  # the labelled sites' own figure: the same for every arm
            rec["fixed"] = fixed([base + 0.01 * seed] * 4 + [base - 0.05])
            results.append(rec)
    text = write_report(results, {"size": {"name": "made-up"}}, tmp_path / "u.md", tmp_path).read_text()
    # fixed: all - scratch = +18 DSC on every seed; on the labelled sites the arms tie (+0.0)
    assert "25 % labelled (fixed population): pretrained on all ≥ scratch + 3 DSC, interval above 0: met (+18.0" in text
    assert "## Label efficiency, fixed population" in text and "## Label efficiency (phase F" in text
    # all: 0.78 + 0.01 x seed at sites 1-4, 0.73 at site 5: 77.0, 77.8, 78.6, 79.4 over the seeds, mean 78.2 < 80
    assert "≥ 80% Dice, lower bound ≥ 75%: **missed** (78.2 [76.6, 79.8], 4 seeds)" in text


def test_the_presence_target_reads_the_joint_plan_from_the_pretrained_trunk(tmp_path):
    results = []
    for seed, (joint, scratch) in enumerate(((0.93, 0.99), (0.89, 0.99))):
        for arm, auroc in (("all", joint), ("scratch", scratch)):
            rec = _fine(seed, 0.25, arm, 0.8, plan="joint", tasks="presence")
            rec["presence_auroc"] = {"4": 0.5, "8": auroc}
            results.append(rec)
    text = write_report(results, {"size": {"name": "made-up"}}, tmp_path / "u.md", tmp_path).read_text()
    assert "- Presence from the pretrained trunk (joint plan): AUROC ≥ 0.9: met (91.0 ± 2.8, 2 seed(s))" in text
    results[0]["presence_auroc"]["8"] = 0.85
    text = write_report(results, {"size": {"name": "made-up"}}, tmp_path / "u.md", tmp_path).read_text()
    assert "AUROC ≥ 0.9: **missed** (87.0 ± 2.8, 2 seed(s))" in text

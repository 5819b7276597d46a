"""uharmony-bench: plan/resume logic, report arithmetic, and the whole --quick size end to end."""

import json
import math

import pytest

from simulation.bench import cli
from simulation.bench.report import mean_over_sites, method_rows, site_score
from simulation.bench.sizes import ABLATIONS, DEFAULT, GPU, KAPPAS, METHODS, QUICK, UNSEEN_METHODS
from simulation.kit.page import ms
from simulation.kit.stats import paired


def test_plan_covers_every_part_and_keys_are_unique():
    jobs = cli.plan(DEFAULT, cli.PARTS)
    keys = [k for k, _ in jobs]
    assert len(keys) == len(set(keys))
    for scen, methods in METHODS.items():
        for m in methods:
            for s in DEFAULT.seeds:
                assert f"method/{scen}/{m}/seed{s}" in keys
    assert len(DEFAULT.seeds) >= 5 and set(METHODS) == {"S0", "S2"}
    assert {"fedavg", "fedbn", "uharmony", "centralized", "centralized-uharmony"} <= set(METHODS["S2"])
    assert {"bytes", "flower_ratio", "memory/fedavg", "memory/uharmony", "scale"} <= set(keys)
    assert sum(k.startswith("ablation/") for k in keys) == sum(map(len, ABLATIONS.values())) * len(
        DEFAULT.ablation_seeds
    )
    assert len(DEFAULT.ablation_seeds) >= 3
    unseen = [k for k in keys if k.startswith("unseen/")]  # every site left out in turn
    assert len(unseen) == cli.SCENARIO_SITES * len(UNSEEN_METHODS) * len(DEFAULT.unseen_seeds)
    assert sum(k.startswith("kappa/") for k in keys) == len(KAPPAS) * 3 * len(DEFAULT.kappa_seeds)
    assert DEFAULT.scale_sites == 23  # FeTS partitioning_1
    assert [k for k, _ in cli.plan(DEFAULT, cli.DEFAULT_PARTS)] == [k for k in keys if k.startswith("method/")]


def test_same_budget_for_every_method():
    """Every method job of a seed shares the data, rounds, local steps and model: only the strategy differs."""
    base = DEFAULT.base_overrides(1, "S2")
    assert base["local-steps"] == DEFAULT.local_steps and base["num-server-rounds"] == DEFAULT.rounds
    assert base["seed"] == 1 and base["synth-scenario"] == "S2" and base["synth-kappa"] == DEFAULT.kappa
    assert GPU.device == "cuda" and GPU.patch_size > DEFAULT.patch_size


def test_resume_refuses_a_work_folder_of_another_size(tmp_path):
    from dataclasses import replace

    path = tmp_path / "size.json"
    cli.check_same_size(path, DEFAULT, resume=False)
    cli.check_same_size(path, replace(DEFAULT, seeds=(0,), workers=1), resume=True)  # what --seeds/--workers change
    other = replace(DEFAULT, rounds=DEFAULT.rounds // 2)
    with pytest.raises(SystemExit, match=rf"size.json.*rounds={DEFAULT.rounds}.*now rounds={other.rounds}"):
        cli.check_same_size(path, other, resume=True)
    cli.check_same_size(path, other, resume=False)  # a fresh start records the new size
    assert json.loads(path.read_text())["rounds"] == other.rounds
    # a folder recorded before a size field existed ran at its default: resumable at it, not at another value
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "val_cases"}))
    cli.check_same_size(path, other, resume=True)
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "val_cases"}))
    with pytest.raises(SystemExit, match=r"val_cases=0.*now val_cases=6"):
        cli.check_same_size(path, replace(other, val_cases=6), resume=True)


def test_wall_time_of_a_part_sums_its_invocations():
    recs = [
        {"kind": "wall", "parts": ["methods"], "minutes": 20.0},
        {"kind": "method"},
        {"kind": "wall", "parts": ["methods"], "minutes": 61.7},  # the same part, resumed after a kill
        {"kind": "wall", "parts": ["unseen", "ablations"], "minutes": 5.04},
    ]
    assert cli.wall_minutes(recs) == {"methods": 81.7, "unseen+ablations": 5.0}
    rerun = {"kind": "wall", "parts": ["methods"], "minutes": 49.1, "rerun": ["method/S2/uharmony/"]}
    assert cli.wall_minutes([*recs, rerun]) == {"methods": 81.7, "unseen+ablations": 5.0}  # counted once
    assert cli.wall_minutes([*recs, rerun], reruns=True) == {"methods": 49.1}
    assert cli._command(rerun) == "uharmony-bench --resume --parts methods --rerun method/S2/uharmony/"
    assert cli._command(recs[0]) == "uharmony-bench"


def test_rerun_sets_the_matching_records_aside_and_keeps_the_rest(tmp_path):
    jsonl = tmp_path / "results.jsonl"
    recs = [
        {"job": "method/S2/uharmony/seed0", "kind": "method"},
        {"job": "method/S2/uharmony-x/seed0", "kind": "method"},
        {"job": "method/S2/fedavg/seed0", "kind": "method"},
        {"job": "wall/2", "kind": "wall", "parts": ["methods"], "minutes": 1.0},
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    gone = cli.drop_for_rerun(jsonl, ["method/S2/uharmony/"])
    assert [r["job"] for r in gone] == ["method/S2/uharmony/seed0"]
    assert [json.loads(x)["job"] for x in jsonl.read_text().splitlines()] == [r["job"] for r in recs[1:]]
    assert json.loads((tmp_path / "replaced.jsonl").read_text())["job"] == "method/S2/uharmony/seed0"
    with pytest.raises(SystemExit):  # --rerun without --resume would rerun everything: refused
        cli.main(["--quick", "--out", str(tmp_path), "--rerun", "method/"])


def test_paired_interval_and_verdict():
    d = paired({0: 0.80, 1: 0.82, 2: 0.78}, {0: 0.70, 1: 0.71, 2: 0.69})
    assert d.n == 3 and d.low > 0 and d.significant and "not significant" not in d.text()
    d = paired({0: 0.80, 1: 0.70, 2: 0.75}, {0: 0.75, 1: 0.75, 2: 0.75})
    assert d.low < 0 < d.high and "not significant" in d.text()
    assert paired({0: 0.5}, {1: 0.5}) is None


def test_scores_skip_unannotated_regions():
    assert site_score({"ET": None, "TC": None, "WT": 0.8}) == pytest.approx(0.8)
    assert mean_over_sites(
        {"1": {"ET": 0.2, "TC": 0.4, "WT": 0.6}, "2": {"ET": None, "TC": None, "WT": 1.0}}
    ) == pytest.approx(0.7)
    assert ms([0.5, 0.7]) == "60.0 ± 14.1"
    assert ms([0.5]) == "50.0" and ms([]) == "–"


def test_method_rows_split_uharmony_modes():
    rec = {
        "kind": "method",
        "method": "uharmony",
        "seed": 0,
        "modes": ["oracle", "gated"],
        "final": {
            "oracle": {"1": {"ET": 0.1, "TC": 0.1, "WT": 0.1}},
            "gated": {"1": {"ET": 0.3, "TC": 0.3, "WT": 0.3}},
        },
        "curve": [
            {
                "round": 1,
                "oracle": {"1": {"ET": 0.1, "TC": 0.1, "WT": 0.1}},
                "gated": {"1": {"ET": 0.3, "TC": 0.3, "WT": 0.3}},
            }
        ],
    }
    rows = method_rows([rec, {**rec, "method": "fedavg", "modes": ["gated"]}])
    assert list(rows) == ["fedavg", "uharmony/oracle", "uharmony/gated"]
    assert rows["uharmony/gated"][0]["curve"] == [(1, pytest.approx(0.3))]


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("UHARMONY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / ".flwr"))
    out, md = tmp_path / "bench", tmp_path / "docs" / "results.md"
    assert cli.main(["--quick", "--out", str(out), "--results-md", str(md)]) == 0
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {
        "method",
        "unseen",
        "ablation",
        "kappa",
        "plateau",
        "bytes",
        "flower_ratio",
        "memory",
        "scale",
        "wall",
    }
    methods = {(r["scenario"], r["method"], r["seed"]) for r in records if r["kind"] == "method"}
    assert methods == {(sc, m, s) for sc, ms_ in METHODS.items() for m in ms_ for s in QUICK.seeds}
    for r in records:
        if r["kind"] == "method":
            assert r["per_case"] and all(c["site"] and "dice-wt" in c for c in r["per_case"])
            for per_site in (r["final"][mode] for mode in r["modes"]):
                assert len(per_site) == cli.SCENARIO_SITES
                assert all(v is None or 0.0 <= v <= 1.0 for d in per_site.values() for v in d.values())
    scale = next(r for r in records if r["kind"] == "scale")
    n = QUICK.scale_sites
    assert scale["accepted"] == n and scale["evaluated_sites"] == n and scale["rejected"] == 0
    ratio = next(r for r in records if r["kind"] == "flower_ratio")
    assert ratio["ratio_median"] > 0 and ratio["update_bytes_per_site"] > 0
    assert ratio["dice_flower"] == pytest.approx(ratio["dice_bare"], abs=1e-6)  # same library code, same result
    mem = [r for r in records if r["kind"] == "memory"]
    assert all(r["peak_rss_mib"] >= r["rss_after_imports_mib"] > 0 for r in mem)
    unseen = [r for r in records if r["kind"] == "unseen" and r["method"] == "uharmony"]
    assert all("uncalibrated" in r and r["calibration_scans"] > 0 for r in unseen)
    assert all("unseen_shared" in r and 0.0 <= r["beyond_reach"] <= 1.0 for r in unseen)  # with the test, its rate
    gated = [r for r in records if r["kind"] == "method" and r["method"] == "uharmony"]
    assert all(0.0 <= v <= 1.0 for r in gated for v in r["gate_unseen"].values())
    page = md.read_text()
    assert "with the “none of these” test" in page and "beyond every domain's reach" in page
    for heading in ("## Targets", "## Scenario S2", "## Scenario S0", "## Unseen site", "## Ablations", "## Costs"):
        assert heading in page
    assert "Machine:" in page and "seeds [0]" in page and "nan" not in page.lower()
    assert "Paired differences" in page and "## Plateau check" in page and "κ = 2" in page
    for name in ("results.jsonl", "dice_per_round_S2.png", "dice_per_round_S0.png", "overlays.png", "meta.json"):
        assert (md.parent / "results" / name).stat().st_size > 0
    # --resume keeps the records and runs nothing new
    n = len(records)
    assert cli.main(["--quick", "--out", str(out), "--results-md", str(md), "--resume"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    assert not math.isnan(scale["train_round_seconds"])


def test_the_page_names_the_parts_not_run_yet():
    from simulation.bench.results_md import _not_run

    line = _not_run([{"kind": "wall", "parts": ["methods"]}, {"kind": "wall", "parts": ["plateau", "unseen"]}])
    assert line == [
        "- Not run at this size yet: ablations, kappa, costs, scale "
        "(`uharmony-bench --resume --parts ablations kappa costs scale`)."
    ]
    assert _not_run([{"kind": "wall", "parts": list(cli.PARTS)}]) == []


def test_the_page_names_the_machines_its_records_ran_on_not_the_one_regenerating_it():
    walls = [{"kind": "wall", "parts": ["methods"]}, {"kind": "wall", "parts": ["unseen"], "machine": "EPYC (AVX2)"}]
    assert cli.records_machine(walls) == "not recorded (before 2026-11-25); EPYC (AVX2)"
    assert cli.records_machine([]) == cli.machine()


@pytest.mark.parametrize("vary", ["nokey=1", "residual-weight-decay=abc", "novalue"])
def test_the_pilot_refuses_a_bad_setting_before_any_job(vary, capsys):
    from simulation.bench.pilot import _setting, main

    with pytest.raises(SystemExit):
        main(["--vary", vary, "--workers", "1"])
    assert "--vary" in capsys.readouterr().err
    assert _setting("residual-weight-decay", "1") == {"residual-weight-decay": 1.0}  # the field's own type

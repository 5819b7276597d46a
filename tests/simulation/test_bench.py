"""uharmony-bench: plan/resume logic, report arithmetic, and the whole --quick size end to end."""

import json
import math

import pytest

from simulation.bench import cli
from simulation.bench.report import mean_over_sites, method_rows, ms, site_score
from simulation.bench.sizes import ABLATIONS, DEFAULT, METHODS, QUICK


def test_plan_covers_every_part_and_keys_are_unique():
    jobs = cli.plan(DEFAULT, cli.PARTS)
    keys = [k for k, _ in jobs]
    assert len(keys) == len(set(keys))
    for m in METHODS:
        for s in DEFAULT.seeds:
            assert f"method/{m}/seed{s}" in keys
    assert len(DEFAULT.seeds) >= 3
    assert {"bytes", "flower_ratio", "memory/fedavg", "memory/uharmony", "scale"} <= set(keys)
    assert sum(k.startswith("ablation/") for k in keys) == len(ABLATIONS) * len(DEFAULT.ablation_seeds)
    assert DEFAULT.scale_sites == 23  # FeTS partitioning_1


def test_same_budget_for_every_method():
    """Every method job of a seed shares the data, rounds, local steps and model: only the strategy differs."""
    base = DEFAULT.base_overrides(1)
    assert base["local-steps"] == DEFAULT.local_steps and base["num-server-rounds"] == DEFAULT.rounds
    assert base["seed"] == 1 and base["synth-sites"] == DEFAULT.sites


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
    assert kinds == {"method", "unseen", "ablation", "bytes", "flower_ratio", "memory", "scale"}
    methods = {(r["method"], r["seed"]) for r in records if r["kind"] == "method"}
    assert methods == {(m, s) for m in METHODS for s in QUICK.seeds}
    for r in records:
        if r["kind"] == "method":
            for per_site in (r["final"][mode] for mode in r["modes"]):
                assert len(per_site) == QUICK.sites
                assert all(v is None or 0.0 <= v <= 1.0 for d in per_site.values() for v in d.values())
    scale = next(r for r in records if r["kind"] == "scale")
    assert scale["accepted"] == 23 and scale["evaluated_sites"] == 23 and scale["rejected"] == 0
    ratio = next(r for r in records if r["kind"] == "flower_ratio")
    assert ratio["ratio_median"] > 0 and ratio["update_bytes_per_site"] > 0
    assert ratio["dice_flower"] == pytest.approx(ratio["dice_bare"], abs=1e-6)  # same library code, same result
    mem = [r for r in records if r["kind"] == "memory"]
    assert all(r["peak_rss_mib"] >= r["rss_after_imports_mib"] > 0 for r in mem)
    unseen = [r for r in records if r["kind"] == "unseen" and r["method"] == "uharmony"]
    assert all("uncalibrated" in r and r["calibration_scans"] > 0 for r in unseen)
    page = md.read_text()
    for heading in ("## Targets", "## Methods", "## Unseen site", "## Ablations", "## Costs", "## Scale"):
        assert heading in page
    assert "Machine:" in page and "seeds [0, 1]" in page and "nan" not in page.lower()
    for name in ("results.jsonl", "dice_per_round.png", "overlays.png", "meta.json"):
        assert (md.parent / "results" / name).stat().st_size > 0
    # --resume keeps the records and runs nothing new
    n = len(records)
    assert cli.main(["--quick", "--out", str(out), "--results-md", str(md), "--resume"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    assert not math.isnan(scale["train_round_seconds"])

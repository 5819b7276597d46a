"""A site joins a running federation (real Flower simulation runtime, tiny sizes).

Site 4 of the join federation is post-operative: it brings an ADC contrast and the resection-cavity
class (RC), and its domain is new. Its SuperNode answers "not ready" until its join round.
"""

import json

import pytest

from simulation.join.cli import main as join_main
from simulation.runner import run
from tests.conftest import tiny_overrides
from uharmony.records.checkpoint import load_checkpoint
from uharmony.records.runlog import RunLog

# with the deployment tests, on the worker of Flower's runtimes: balances the two workers of scripts/test.sh
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]

TOL = 1e-6  # old sites' Dice right after the extension: unchanged but for float rounding


def _records(run_dir):
    return RunLog(run_dir).records()


def test_join_grows_the_model_keeps_old_sites_and_resumes(tiny_join_federation, tmp_path):
    """In process (a join through Flower's runtime: the TLS deployment test; Flower's simulation runtime and this
    transport give identical results: tests/simulation/test_runner.py)."""
    run_dir = tmp_path / "run"
    run(tiny_overrides(tiny_join_federation, run_dir, num_server_rounds=2, join_schedule="4@2"))
    recs = _records(run_dir)
    assert [r["site"] for r in recs if r.get("event") == "join-pending"] == ["4"]
    joins = {r["site"]: r for r in recs if r.get("event") == "join"}
    assert {s: j["round"] for s, j in joins.items()} == {"1": 1, "2": 1, "3": 1, "4": 2}
    assert joins["4"]["added"] == {"modalities": ["adc"], "regions": ["RC"], "domains": [3]}
    trains = {r["round"]: r for r in recs if r.get("event") == "train"}
    assert sorted(trains[1]["sites"]) == ["1", "2", "3"] and sorted(trains[2]["sites"]) == ["1", "2", "3", "4"]
    assert trains[2]["rejected"] == [] and trains[2]["full-model-bytes"] > trains[1]["full-model-bytes"]

    # every site was evaluated on the grown model before anyone trained on it: old sites unchanged
    before = {
        (r["site"], r["mode"], r["region"]): r["dice"]
        for r in recs
        if r.get("round") == 1 and "dice" in r and "phase" not in r
    }
    after = {
        (r["site"], r["mode"], r["region"]): r["dice"]
        for r in recs
        if r.get("phase") == "after-extension" and "dice" in r
    }
    old = {k for k in after if k[0] != "4"}
    assert old == set(before) and len(old) == 3 * 2 * 3  # sites 1-3 x 2 modes x ET/TC/WT
    assert max(abs(after[k] - before[k]) for k in old) <= TOL
    assert {k[2] for k in after if k[0] == "4"} == {"ET", "TC", "WT", "RC"}
    assert {r["region"] for r in recs if r.get("round") == 2 and r.get("site") == "4" and "dice" in r} == {
        "ET",
        "TC",
        "WT",
        "RC",
    }

    spec = load_checkpoint(run_dir, "final_model.pt")["spec"]
    assert spec["modalities"][-1] == "adc" and spec["regions"][-1] == "RC" and spec["num_domains"] == 4
    # resume continues from the grown model; the returning nodes fit it, nothing is added again
    run(tiny_overrides(tiny_join_federation, run_dir, num_server_rounds=3, join_schedule="4@2", resume=True))
    recs = _records(run_dir)
    rejoins = [r for r in recs if r.get("event") == "join" and r["round"] == 3]
    assert len(rejoins) == 4 and all(not any(r["added"].values()) for r in rejoins)
    assert sorted([r for r in recs if r.get("event") == "train"][-1]["sites"]) == ["1", "2", "3", "4"]
    assert load_checkpoint(run_dir, "final_model.pt")["spec"] == spec


def test_a_site_needing_an_extension_is_refused_when_extension_is_off(tiny_join_federation, tmp_path):
    run_dir = tmp_path / "refuse"
    run(tiny_overrides(tiny_join_federation, run_dir, num_server_rounds=2, join_schedule="4@2", extend_on_join=False))
    recs = _records(run_dir)
    refused = [r for r in recs if r.get("event") == "join-refused"]
    assert len(refused) == 1 and refused[0]["site"] == "4" and "extend-on-join is false" in refused[0]["reason"]
    assert "adc" in refused[0]["reason"] and "RC" in refused[0]["reason"]
    assert all(sorted(r["sites"]) == ["1", "2", "3"] for r in recs if r.get("event") == "train")
    assert load_checkpoint(run_dir, "final_model.pt")["spec"]["num_domains"] == 3


def test_join_command_quick(tmp_path, capsys):
    out, md = tmp_path / "join", tmp_path / "join.md"
    assert join_main(["--quick", "--out", str(out), "--md", str(md)]) == 0
    summary = json.loads((out / "join.jsonl").read_text().splitlines()[0])
    gated = summary["modes"]["gated"]
    assert gated["max_change_after_extension"] <= TOL
    assert set(gated["old_sites"]["before join"]) == {"1", "2", "3"}
    assert set(gated["new_site"]["final"]) == {"ET", "TC", "WT", "RC"}
    text = md.read_text()
    assert "## The new site" in text and "right after extension" in text and "control" in text
    assert (tmp_path / "join" / "join.png").stat().st_size > 5000
    # a second call keeps the finished arms
    assert join_main(["--quick", "--out", str(out), "--md", str(md)]) == 0
    assert capsys.readouterr().out.count("kept") == 2

"""The two transports: Flower's simulation runtime and the in-process grid run one engine, with one result."""

import json

import pytest
import torch

from simulation.runner import main as sim_main
from simulation.runner import run
from tests.conftest import tiny_overrides
from uharmony.records.checkpoint import load_checkpoint
from uharmony.records.runlog import RunLog


@pytest.mark.slow
@pytest.mark.xdist_group("flower-runtimes")  # Flower's simulation runtime: beside the deployment tests
def test_flower_simulation_and_the_inprocess_grid_give_identical_results(tiny_federation, tmp_path):
    over = tiny_overrides(tiny_federation, None, num_server_rounds=1)
    flower = run({**over, "run_dir": str(tmp_path / "flower")}, transport="flower")
    inproc = run({**over, "run_dir": str(tmp_path / "inprocess")})
    assert flower["summary"] == inproc["summary"] and set(flower["summary"]) == {"oracle", "gated"}
    a, b = (load_checkpoint(tmp_path / t, "final_model.pt")["state"] for t in ("flower", "inprocess"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    per_site = [
        [(r["site"], r["mode"], r["region"], r["dice"]) for r in RunLog(tmp_path / t).records() if "dice" in r]
        for t in ("flower", "inprocess")
    ]
    assert per_site[0] == per_site[1] and len(per_site[0]) > 8


def test_a_run_counts_only_its_own_completion_record(trained_run, tmp_path):
    """A folder holding an earlier run's "done" record does not make a re-run that wrote none a success."""
    (tmp_path / "metrics.jsonl").write_text((trained_run / "metrics.jsonl").read_text())
    log = RunLog(tmp_path)
    assert log.done() is not None and log.done("a-run-that-wrote-nothing") is None


def test_the_command_line(tiny_federation, tmp_path, capsys):
    over = tiny_overrides(tiny_federation, tmp_path / "cli", num_server_rounds=1)
    sets = [f"{k.replace('_', '-')}={v}" for k, v in over.items() if k != "run_dir"]
    assert sim_main(["--run-dir", str(tmp_path / "cli"), "--strategy", "fedavg", "--set", *sets]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert summary["gated"] == summary["oracle"]  # one plain head: dataset-free is the only mode
    assert sim_main(["--set", "strategy=fedavgg"]) == 2 and "did you mean 'fedavg'" in capsys.readouterr().err
    assert sim_main(["--set", "lr"]) == 2 and "KEY=VALUE" in capsys.readouterr().err

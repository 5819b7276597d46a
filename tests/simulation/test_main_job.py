"""The main job's steps around ``flwr run`` on real runs: relative folders work from wherever the user stands,
and ``check`` passes only a run with real results (a site trained, a final Dice, this run's plot)."""

import json
import os
import shutil
from pathlib import Path

import pytest

from simulation.main_job import check_results, run_config
from simulation.main_job import main as main_job
from simulation.runner import run
from simulation.synth.cli import main as data_cli
from tests.conftest import tiny_overrides
from uharmony.data import load_federation
from uharmony.records.runlog import RunLog

REPO = Path(__file__).resolve().parents[2]


def _cfg(run_dir, **extra):
    entries = {"run-dir": str(run_dir), **extra}
    return run_config(" ".join(f"{k}='{v}'" for k, v in entries.items()))


def test_synth_a_run_and_its_check_from_a_relative_folder(tmp_path, monkeypatch, capsys):
    """The README's `uharmony-data synth --out data/synth` and a run on `data-root='data/synth'`, typed in the
    folder that holds them: the montage is drawn, every site trains, and the check passes."""
    monkeypatch.chdir(tmp_path)
    assert data_cli(["synth", "--out", "data/synth", "--sites", "2", "--cases-per-site", "3", "--spacing", "6"]) == 0
    assert Path("data/synth/montage.png").stat().st_size > 1000
    fed = load_federation("data/synth")
    assert Path(fed.root).is_absolute() and Path(fed.root) == tmp_path / "data" / "synth"
    assert all(Path(p).is_file() for s in fed.sites for c in s.cases for p in [*c.images.values(), c.label])
    result = run(tiny_overrides("data/synth", "runs/rel", num_server_rounds=1))
    records = RunLog("runs/rel").records()
    assert [sorted(r["sites"]) for r in records if r.get("event") == "train"] == [["1", "2"]]
    assert result["summary"]
    text = check_results(_cfg("runs/rel"), RunLog("runs/rel").done()["run-id"])
    assert "final mean Dice" in text and "runs/rel/dice_per_round.png" in text
    # the absolute folders scripts/main.sh hands to flwr run, from the folder the user typed them in
    capsys.readouterr()
    assert main_job(["paths", "-c", "data-root='data/synth'", "-c", "run-dir='runs/rel'"]) == 0
    assert capsys.readouterr().out.split() == [f"data-root='{tmp_path}/data/synth'", f"run-dir='{tmp_path}/runs/rel'"]


def test_check_refuses_a_run_in_which_no_site_trained(tiny_federation, tmp_path):
    """A federation whose every case is missing: each site refuses to train, so the run itself fails (a run that
    trained nothing writes no final model and is no success), and the check refuses it too."""
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_federation / "federation.json", broken / "federation.json")  # no case files beside it
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"no round changed the model: no site trained in any of its 1 rounds"):
        run(tiny_overrides(broken, run_dir, num_server_rounds=1, strategy="fedavg"))
    assert RunLog(run_dir).done() is None and not (run_dir / "final_model.pt").exists()
    with pytest.raises(RuntimeError, match=r"run failed: no round changed .*; site 1: .*no usable training"):
        check_results(_cfg(run_dir, strategy="fedavg"), None, "run 7: status finished:failed after 3 s")


def test_check_refuses_an_empty_final_dice_or_a_missing_or_stale_plot(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    cfg = _cfg(run_dir)
    assert "dataset-free (gate)" in check_results(cfg, None)  # the session's real run passes
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    done = [json.loads(x) for x in lines if '"event": "done"' in x][-1]
    emptied = [x if '"event": "done"' not in x else json.dumps({**done, "final-mean-dice": {}}) for x in lines]
    (run_dir / "metrics.jsonl").write_text("\n".join(emptied) + "\n")
    with pytest.raises(RuntimeError, match="no final Dice"):
        check_results(cfg, None)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    plot = run_dir / "dice_per_round.png"
    os.utime(plot, (done["time"] - 3600, done["time"] - 3600))  # an earlier run's plot
    with pytest.raises(RuntimeError, match="wrote no .*dice_per_round.png"):
        check_results(cfg, None)
    plot.unlink()
    with pytest.raises(RuntimeError, match="wrote no .*dice_per_round.png"):
        check_results(cfg, None)


def test_main_sh_hands_flwr_absolute_folders_and_never_advises_pkill():
    text = (REPO / "scripts" / "main.sh").read_text()
    assert "pkill" not in text and "killall" not in text
    assert "main_job paths" in text and '-c "$paths"' in text
    assert text.count('main_job check ${rc[@]+"${rc[@]}"} -c "$paths"') == 1

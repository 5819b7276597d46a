"""Issue 31, items 5 and 6: ``uharmony-coordinator run`` shows a deployed run's progress while it runs, waits as
long as told (``--timeout``), and writes each run into its own folder under the coordinator's state folder."""

import json
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from server.operator import coordinator, deployed_runs
from server.operator.progress import RoundLogFollower
from uharmony.records.runlog import RunLog


def _log_a_round(log: RunLog, rnd: int) -> None:
    """What the ServerApp's round engine logs for one round: sites' evaluations, the train record, a refusal."""
    per_site = {
        "s1": {"dice-et-gated": 0.61, "dice-wt-gated": 0.8, "dice-et-oracle": 0.6, "num-examples": 3},
        "s2": {"dice-et-gated": 0.42, "dice-wt-gated": 0.7, "dice-et-oracle": 0.4, "num-examples": 2},
    }
    log.evaluation(rnd, "uharmony", per_site)
    rejected = [{"node": 99, "site": "s3", "reason": "update norm 40.0 > 10 x the global model's"}]
    log.write({"round": rnd, "event": "train", "strategy": "uharmony", "seconds": 12.3, "sites": ["s1", "s2"],
               "rejected": rejected, "train-loss": 0.6, "site-loss": {"s1": 0.5, "s2": 0.7}, "late": []})  # fmt: skip
    log.write({"round": rnd, "event": "join-refused", "node": 7, "site": "s1", "reason": "not registered for any site"})


def test_the_round_log_becomes_progress_lines_with_sites_losses_dice_and_rejections(tmp_path):
    log = RunLog(tmp_path, "run-a")
    _log_a_round(log, 1)  # before the follower started: not repeated
    RunLog(tmp_path, "another-run").write({"round": 9, "event": "train", "sites": ["x"], "rejected": []})
    follow = RoundLogFollower(tmp_path / "metrics.jsonl", "run-a")
    assert follow.poll() == []
    _log_a_round(log, 2)
    log.write({"event": "done", "rounds": 2, "final-mean-dice": {"oracle": 0.5, "gated": 0.63}})
    lines = follow.poll()
    assert lines == [
        "round 2 Dice: s1 ET 0.61 WT 0.80; s2 ET 0.42 WT 0.70",
        "round 2: trained s1 loss 0.500, s2 loss 0.700; train loss 0.600; rejected s3 (update norm 40.0 > 10 x "
        "the global model's) (12 s)",
        "round 2: join-refused s1: not registered for any site",
        "done after round 2: final mean Dice oracle 0.500, gated 0.630",
    ]
    assert follow.poll() == []  # nothing new


def test_a_new_run_gets_its_own_folder_under_the_state_folder_never_runs_latest(tmp_path):
    state = tmp_path / "state"
    first, folder1, id1 = deployed_runs.run_overrides(state, "num-server-rounds=2 strategy='fedavg'")
    _, folder2, id2 = deployed_runs.run_overrides(state, "num-server-rounds=2")
    cfg = parse_config_args([first])
    assert id1 != id2 and folder1 != folder2
    assert folder1 == state.resolve() / "runs" / id1 and cfg["run-dir"] == str(folder1) and cfg["run-id"] == id1
    assert cfg["num-server-rounds"] == 2 and cfg["strategy"] == "fedavg"
    _, named, _ = deployed_runs.run_overrides(state, "run-dir='trial'")  # relative: under the state folder
    assert named == state.resolve() / "runs" / "trial"
    _, absolute, _ = deployed_runs.run_overrides(state, f"run-dir='{tmp_path / 'mine'}'")
    assert absolute == tmp_path / "mine"
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        deployed_runs.run_overrides(state, "", resume=id1)
    (folder1 / "checkpoints").mkdir(parents=True)
    resumed, folder, run_id = deployed_runs.run_overrides(state, "num-server-rounds=4", resume=id1)
    assert (folder, run_id) == (folder1, id1)
    deployed_runs.record_flower_run(folder1, "4242")  # Flower's id of its first attempt names it too
    assert deployed_runs.run_overrides(state, "", resume="4242")[1:] == (folder1, id1)
    assert parse_config_args([resumed]) == {
        "num-server-rounds": 4, "resume": True, "run-id": id1, "run-dir": str(folder1)
    }  # fmt: skip


class FakeFlower:
    """Stands in for the ``flwr`` CLI of a run: ``flwr run`` returns an id; every ``flwr ls`` finds the ServerApp
    one round further (its round engine writes the round log), and finished after ``rounds``."""

    def __init__(self, rounds: int) -> None:
        self.rounds, self.looks, self.config = rounds, 0, {}

    def __call__(self, state, *args):
        class Done:
            returncode, stderr = 0, ""

        if args[0] == "run":
            self.config = parse_config_args([args[args.index("-c") + 1]])
            Done.stdout = json.dumps({"success": True, "run-id": 4242})
            return Done
        self.looks += 1
        if self.looks <= self.rounds:
            _log_a_round(RunLog(self.config["run-dir"], self.config["run-id"]), self.looks)
        status = "finished:completed" if self.looks > self.rounds else "running"
        Done.stdout = json.dumps({"runs": [{"run-id": "4242", "status": status, "status-details": "", "elapsed": 3}]})
        return Done


@pytest.fixture
def published(monkeypatch):
    monkeypatch.setattr(coordinator.app_registry, "app_public_key", lambda pki: None)
    monkeypatch.setattr(coordinator.app_registry, "latest", lambda state, key: {"app_id": "@u/app", "version": "1"})
    monkeypatch.setattr(coordinator, "server_app_config", lambda pki, state: "site-registry='r.json'")


def test_run_prints_each_round_while_it_runs_then_the_final_status(tmp_path, published, monkeypatch, capsys):
    fake = FakeFlower(rounds=2)
    monkeypatch.setattr(deployed_runs, "flwr", fake)
    done = coordinator.run(Path("pki"), tmp_path / "state", "num-server-rounds=2", poll=0.01)
    assert done["status"] == "finished:completed"
    assert (
        done["run-dir"]
        == fake.config["run-dir"]
        == str((tmp_path / "state").resolve() / "runs" / fake.config["run-id"])
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("run 4242 submitted") and fake.config["run-dir"] in out[0]
    assert json.loads((Path(fake.config["run-dir"]) / "flower-runs.json").read_text()) == ["4242"]
    trained = [line for line in out if line.startswith("round ") and ": trained s1 loss 0.500" in line]
    assert [line.split(":")[0] for line in trained] == ["round 1", "round 2"]
    assert any(line.startswith("round 2 Dice: s1 ET 0.61") for line in out)


def test_run_waits_as_long_as_told_and_says_the_run_goes_on(tmp_path, published, monkeypatch, capsys):
    fake = FakeFlower(rounds=10**6)  # never finishes
    monkeypatch.setattr(deployed_runs, "flwr", fake)
    args = ["run", "--pki", "pki", "--state", str(tmp_path / "state"), "-c", "num-server-rounds=99"]
    assert coordinator.main([*args, "--timeout", "0.3"]) == 2
    captured = capsys.readouterr()
    assert "did not finish within 0.3 s; it goes on" in captured.err and "uharmony-coordinator status" in captured.err
    assert ": trained s1" in captured.out


def test_start_refuses_a_taken_port_naming_its_option(tmp_path, capsys):
    import socket

    with socket.socket() as taken:  # e.g. a hospital's SuperNode rehearsed on the same machine
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["start", "--pki", str(tmp_path / "pki"), "--state", str(tmp_path / "state"), "--host", "127.0.0.1"]
        assert coordinator.main([*args, "--port", str(port)]) == 2
        assert f"--port {port}: 127.0.0.1:{port} is not free" in capsys.readouterr().err
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        assert coordinator.main([*args, "--port", str(free), "--superlink-port", str(port)]) == 2
        assert f"--superlink-port {port}" in capsys.readouterr().err


def test_a_misspelt_run_config_key_is_named_before_anything_is_submitted(tmp_path):
    """The new-user trial: ``run -c "num-server-round=2"`` got only Flower's "Invalid run configuration"."""
    with pytest.raises(ValueError, match="unknown key 'num-server-round'"):
        deployed_runs.run_overrides(tmp_path / "state", "min-sites=2 num-server-round=2")
    with pytest.raises(ValueError, match="min-sites"):
        deployed_runs.run_overrides(tmp_path / "state", "min-sites='two'")


def test_the_watcher_stops_when_the_superlink_stops_answering(tmp_path, monkeypatch):
    """New-user trial: a dead SuperLink left `uharmony-coordinator run` waiting until its timeout (or for ever)."""
    monkeypatch.setattr(deployed_runs, "flower_status", lambda state, run_id: None)  # no answer, ever
    with pytest.raises(RuntimeError, match="SuperLink has not answered for 0.05 s.*uharmony-coordinator start"):
        deployed_runs.wait(tmp_path / "state", "4242", tmp_path / "run", None, 0, poll=0.01, silent=0.05)


def test_publish_builds_from_the_repository_by_default():
    """A review found the default app folder one level too shallow after server/operator/ was made."""
    assert (coordinator.APP_FOLDER / "pyproject.toml").is_file() and (coordinator.APP_FOLDER / "server").is_dir()


def test_a_failed_run_is_one_progress_line_with_its_reason():
    from server.operator.progress import event_line

    line = event_line({"event": "failed", "rounds": 2, "reason": "no round changed the model: ..."})
    assert line == "failed after round 2: no round changed the model: ..."

"""Phases as plug-ins of the round engine: a new phase is its own class and one registration."""

import pytest

from server.phase import Phase, labelled, make_phase, register_phase, unregister_phase
from server.pretraining import Pretraining
from tests.conftest import tiny_overrides
from uharmony.federation.config import RunConfig
from uharmony.records.checkpoint import load_checkpoint
from uharmony.records.runlog import RunLog


class FirstSiteOnly(Phase):
    """A phase written for this test: only the first labelled site trains, at half the scheduled rate; each
    evaluation point writes its own record and log fragment; it counts its evaluations in its checkpoint
    state. Everything else (what is sent, the start, the end) is segmentation's."""

    name = "first-site-only"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.evaluations = 0

    def trainers(self, engine, members):
        return labelled(engine, members)[:1]

    def learning_rate(self, engine, rnd, scheduled):
        return scheduled / 2

    def at_evaluation(self, engine, rnd, last):
        self.evaluations += 1
        engine.runlog.write({"round": rnd, "event": "first-site-only", "evaluations": self.evaluations})
        return f"first-site-only evaluation {self.evaluations}; " + super().at_evaluation(engine, rnd, last)

    def state_dict(self):
        return {"evaluations": self.evaluations}

    def load_state_dict(self, state):
        self.evaluations = int(state["evaluations"])


@pytest.fixture
def first_site_only():
    yield register_phase(FirstSiteOnly)
    unregister_phase(FirstSiteOnly.name)


def test_the_engine_finds_each_phase_by_the_run_configs_name():
    assert type(make_phase(RunConfig.from_flwr({}))) is Phase
    assert type(make_phase(RunConfig.from_flwr({"phase": "pretrain"}))) is Pretraining
    with pytest.raises(ValueError, match="phase"):
        RunConfig.from_flwr({"phase": "never-registered"})


def test_a_new_phase_runs_a_federation_from_its_own_class(first_site_only, tiny_federation, tmp_path):
    from simulation.runner import run

    run_dir = tmp_path / "run"
    run(tiny_overrides(tiny_federation, run_dir, phase="first-site-only", num_server_rounds=2, lr=0.004))
    recs = RunLog(run_dir).records()
    trains = [r for r in recs if r.get("event") == "train"]
    assert [r["sites"] for r in trains] == [["1"], ["1"]]  # one site trained each round
    assert [r["evaluations"] for r in recs if r.get("event") == "first-site-only"] == [1, 2]
    assert {r["site"] for r in recs if "dice" in r} == {"1", "2", "3", "4"}  # segmentation's evaluation
    final = load_checkpoint(run_dir, "final_model.pt")
    assert final["extra"]["phase-state"] == {"evaluations": 2}  # its own state, in the engine's checkpoints
    config = (run_dir / "config.json").read_text()
    assert '"phase": "first-site-only"' in config


def test_an_unregistered_phase_is_no_longer_accepted(first_site_only):
    RunConfig.from_flwr({"phase": "first-site-only"})
    unregister_phase("first-site-only")
    with pytest.raises(ValueError, match="phase"):
        RunConfig.from_flwr({"phase": "first-site-only"})
    register_phase(FirstSiteOnly)  # (the fixture unregisters it again)

"""A plain ``flwr run .`` (new-user trial 2026-12-06, problem 9): Flower `uv sync`s the app's dependencies into a
fresh environment (PyPI's Linux torch: the 5 GB CUDA runtime) and starts its default 2 SuperNodes for a 5-site
federation. Now the runtime environment gets CPU torch wheels and a simulation whose SuperNodes do not match the
federation's sites is refused before its first round, naming the main job's one command."""

import tomllib
from pathlib import Path

import pytest
from flwr.superlink.grid import InMemoryGrid

from server.simulation_size import MAIN_JOB, check_simulation_size
from tests.conftest import tiny_overrides
from uharmony.federation.config import RunConfig

REPO = Path(__file__).resolve().parents[2]


class SimulatedGrid(InMemoryGrid):
    """Flower's simulation grid with ``n`` registered SuperNodes (no link state behind it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self):
        return list(range(1, self.n + 1))


class DeploymentGrid:
    def get_node_ids(self):
        return [7]


def _cfg(root, tmp_path, **extra) -> RunConfig:
    return RunConfig.from_flwr(tiny_overrides(root, tmp_path / "run", **extra))


def test_a_simulation_with_fewer_supernodes_than_sites_is_refused_naming_the_main_job(tiny_federation, tmp_path):
    cfg = _cfg(tiny_federation, tmp_path)
    with pytest.raises(RuntimeError, match="has 4 sites but Flower's simulation started 2 SuperNodes") as err:
        check_simulation_size(SimulatedGrid(2), cfg, wait=1.0)
    assert MAIN_JOB in str(err.value) and 'num-supernodes=4"' in str(err.value)
    check_simulation_size(SimulatedGrid(4), cfg, wait=1.0)  # one per site: the run goes on
    check_simulation_size(DeploymentGrid(), cfg)  # hospitals come and go: not checked


def test_an_ungenerated_federation_names_the_main_job(tmp_path, monkeypatch):
    monkeypatch.setenv("UHARMONY_CACHE", str(tmp_path / "empty-cache"))
    cfg = RunConfig.from_flwr({"run-dir": str(tmp_path / "run")})  # the embedded federation, never generated
    with pytest.raises(RuntimeError, match="not generated yet") as err:
        check_simulation_size(SimulatedGrid(2), cfg, wait=1.0)
    assert MAIN_JOB in str(err.value)


def test_flowers_runtime_environment_gets_cpu_torch_wheels():
    """What `uv sync` (Flower's runtime dependency installation) reads from pyproject.toml."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    source = doc["tool"]["uv"]["sources"]["torch"]
    indexes = {i["name"]: i for i in doc["tool"]["uv"]["index"]}
    (entry,) = source
    assert indexes[entry["index"]]["url"] == "https://download.pytorch.org/whl/cpu"
    assert indexes[entry["index"]]["explicit"] is True  # only torch comes from it
    assert "marker" not in entry  # on every platform


def test_the_main_job_runs_one_supernode_per_site_in_its_venv():
    """scripts/main.sh: the app in the checkout's .venv (no per-run environment), one SuperNode per site."""
    script = (REPO / "scripts" / "main.sh").read_text()
    assert "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in script
    assert "options.num-supernodes = $sites" in script
    assert "sites=$(python -m simulation.main_job sites" in script

"""The strategy table: every strategy declared once; a new one is a table entry plus its own code."""

import pytest
import torch

from tests.conftest import tiny_overrides
from uharmony import LOCAL
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles
from uharmony.federation.site_state import load_local_state
from uharmony.federation.strategies import STRATEGIES, Strategy, get_strategy, register
from uharmony.model.roles import module_state_keys
from uharmony.records.checkpoint import load_checkpoint
from uharmony.records.runlog import RunLog


def test_every_strategy_builds_its_model_and_roles():
    for name, spec in STRATEGIES.items():
        cfg = RunConfig.from_flwr({"strategy": name, "filters": "8,16,32"})
        model = cfg.build_model(2)
        roles = ModelRoles(model, name)
        assert model.gated == (spec.head == "gated")
        local = set(roles.keys(LOCAL))
        if name == "local":
            assert roles.global_keys() == []
        elif name == "fedbn":
            assert local and all(k.split(".")[-1] in ("weight", "bias") for k in local)
        elif name == "uharmony":
            assert local and roles.gated
        else:
            assert local == set()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_module_reachable_by_two_names_has_one_role(name):
    """MONAI's DynUNet holds each block twice (``input_block`` and ``skip_layers.downsample``): both names of a
    tensor get the same role, or loading the shared name would overwrite what the site kept (FedBN == FedAvg)."""
    model = RunConfig.from_flwr({"strategy": name, "filters": "8,16,32"}).build_model(2)
    roles = ModelRoles(model, name).roles
    by_tensor: dict[int, set[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(value.data_ptr(), set()).add(roles[key])
    assert any(len(v) for v in by_tensor.values())
    assert all(len(v) == 1 for v in by_tensor.values())


def test_fedbn_site_keeps_its_normalization_after_loading(tiny_federation, tmp_path):
    from uharmony.federation.federated import global_state_of
    from uharmony.federation.site_round import SiteRound

    cfg = RunConfig.from_flwr(tiny_overrides(tiny_federation, tmp_path / "run", strategy="fedbn"))
    model = cfg.build_model(4)
    job = SiteRound({"partition-id": 0}, cfg, model.spec, "fedbn", saved=None)
    start = global_state_of(model, ModelRoles(model, "fedbn"))
    job.load(start)
    _, _, local = job.train(1, 0.01, 3, 0.0, seed=0)
    again = SiteRound({"partition-id": 0}, cfg, model.spec, "fedbn", saved=local)
    again.load(start)
    state = again.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in local.items())
    assert any(not torch.equal(v, torch.ones_like(v)) for k, v in local.items() if k.endswith("weight"))


def test_unknown_and_duplicate_strategies_are_refused():
    with pytest.raises(ValueError, match="'fedavgg'.*did you mean 'fedavg'"):
        get_strategy("fedavgg")
    with pytest.raises(ValueError, match="already registered"):
        register(Strategy("fedavg", "again"))


def head_stays(model, roles):
    """FedPer's own code: every entry of the head module (found by module, not by name) stays at the site."""
    head = set(model.head.modules())
    local = module_state_keys(model, lambda m: m in head)
    return {k: LOCAL if k in local else r for k, r in roles.items()}


@pytest.fixture
def fedper():
    """FedPer (Arivazhagan et al., 2019) added as a table entry; nothing else in the code base changes."""
    yield register(Strategy("fedper", "FedPer: the segmentation head stays at the site", keep_local=head_stays))
    del STRATEGIES["fedper"]


def test_a_new_strategy_runs_a_federation_from_its_table_entry(fedper, tiny_federation, tmp_path):
    from simulation.runner import run

    run_dir = tmp_path / "fedper"
    result = run(tiny_overrides(tiny_federation, run_dir, strategy="fedper", num_server_rounds=1))
    recs = RunLog(run_dir).records()
    assert {r["site"] for r in recs if "dice" in r} == {"1", "2", "3", "4"} and set(result["summary"]) == {
        "gated",
        "oracle",
    }
    final = load_checkpoint(run_dir, "final_model.pt")
    assert final["extra"]["strategy"] == "fedper"
    assert not any(k.startswith("head.") for k in final["state"])  # the head never reached the server
    heads = [load_local_state(p)[0]["head.conv.weight"] for p in sorted((run_dir / "site-state").iterdir())]
    assert len(heads) == 4 and not torch.equal(heads[0], heads[1])  # each site trained its own head


def test_window_gated_runs_train(tiny_federation, tmp_path):
    """The per-window gate's prototype counts windows, not scans: its train replies are accepted."""
    from simulation.runner import run

    run(tiny_overrides(tiny_federation, tmp_path / "run", num_server_rounds=1, head_gate="window"))
    train = [r for r in RunLog(tmp_path / "run").records() if r.get("event") == "train"]
    assert train and len(train[0]["sites"]) == 4 and not train[0]["rejected"]

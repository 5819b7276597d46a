"""End-to-end federations on a tiny synthetic federation with the real Flower simulation runtime."""

import json

import numpy as np
import pytest
import torch

from server import strategy as strategy_module
from server.checkpoint import load_checkpoint
from simulation.runner import run
from tests.federation_helpers import tiny_overrides
from uharmony import model_from_spec
from uharmony import protocol as P
from uharmony.federated import ModelRoles

pytestmark = pytest.mark.slow


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_rounds_and_every_reply_keeps_site_data_at_home(tiny_federation, tmp_path, monkeypatch):
    seen = []
    original = strategy_module.RoleAwareFedAvg.aggregate_train

    def spy(self, server_round, replies):
        replies = list(replies)
        seen.extend(m.content for m in replies if not m.has_error())
        return original(self, server_round, replies)

    monkeypatch.setattr(strategy_module.RoleAwareFedAvg, "aggregate_train", spy)
    run_dir = tmp_path / "run"
    result = run(tiny_overrides(tiny_federation, run_dir, num_server_rounds=2))
    recs = _records(run_dir)
    assert [r["round"] for r in recs if r.get("event") == "train"] == [1, 2]
    evals = [r for r in recs if "dice" in r]
    assert {r["site"] for r in evals} == {"1", "2", "3", "4"} and {r["round"] for r in evals} == {1, 2}
    assert {r["mode"] for r in evals} == {"oracle", "gated"}
    assert {r["region"] for r in evals if r["site"] == "4"} == {"WT"}  # whole-tumour-only site
    assert (run_dir / "dice_per_round.png").stat().st_size > 1000
    assert result["summary"]["gated"] >= 0

    # every train reply: shared entries + own domain's head parts only
    spec = load_checkpoint(run_dir / "checkpoints")["spec"]
    roles = ModelRoles(model_from_spec(spec), "uharmony")
    local = set(roles.keys("local"))
    assert local, "the U-Harmony model has site-local harmonization statistics"
    assert len(seen) == 8
    for content in seen:
        assert set(content.array_records) == {P.ARRAYS}
        arrays = content.array_records[P.ARRAYS]
        domain = int(content.config_records[P.SITE][P.DOMAIN_ID])
        assert set(arrays.keys()) == set(roles.outgoing_keys(domain))
        assert not set(arrays.keys()) & local
        for key, arr in arrays.items():
            a = arr.numpy()
            assert a.ndim < 3 or max(a.shape[2:], default=0) <= 3, f"{key} {a.shape} looks like image data"
        metrics = content.metric_records[P.METRICS]
        site = content.config_records[P.SITE][P.SITE_ID]
        assert metrics[P.NUM_EXAMPLES] == 2, f"site {site}: num-examples must count training cases (3 cases - 1 val)"
        for value in content.config_records[P.SITE].values():
            assert isinstance(value, (str, int, list))
    # site-local state exists on each site's disk
    assert len(list((run_dir / "site-state").glob("site-*/local_state.pt"))) == 4


def test_resume_continues_with_identical_weights(tiny_federation, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(tiny_overrides(tiny_federation, straight, num_server_rounds=2))
    run(tiny_overrides(tiny_federation, resumed, num_server_rounds=1))
    run(tiny_overrides(tiny_federation, resumed, num_server_rounds=2, resume=True))
    trains = [r["round"] for r in _records(resumed) if r.get("event") == "train"]
    assert trains == [1, 2]
    a = load_checkpoint(straight, "final_model.pt")["state"]
    b = load_checkpoint(resumed, "final_model.pt")["state"]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("strategy, extra", [
    ("fedavg", {}), ("fedprox", {}), ("fedbn", {}), ("local", {}), ("centralized", {}),
    ("fedavg", {"dp_noise_multiplier": 0.1, "dp_clipping_norm": 5.0}),  # Flower's DP wrapper
])
def test_each_strategy_runs_a_round(tiny_federation, tmp_path, strategy, extra):
    run_dir = tmp_path / strategy
    result = run(tiny_overrides(tiny_federation, run_dir, strategy=strategy, num_server_rounds=1, **extra))
    recs = _records(run_dir)
    train = [r for r in recs if r.get("event") == "train"][0]
    assert train["rejected"] == []
    assert len({r["site"] for r in recs if "dice" in r}) == 4
    sent = train.get("update-bytes", {})
    if strategy == "local":
        assert set(sent.values()) == {0}  # nothing leaves the site
    if strategy == "fedbn":
        spec = load_checkpoint(run_dir / "checkpoints")["spec"]
        model = model_from_spec(spec)
        norm_bytes = sum(p.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)
                         for p in m.parameters())
        full = train["full-model-bytes"]
        assert all(v <= full - norm_bytes for v in sent.values())
    assert result["summary"]


def test_a_failing_node_does_not_stop_the_round(tiny_federation, tmp_path):
    run_dir = tmp_path / "dropout"
    run(tiny_overrides(tiny_federation, run_dir, num_server_rounds=1), num_supernodes=5)  # node 5 has no site
    recs = _records(run_dir)
    train = [r for r in recs if r.get("event") == "train"][0]
    assert len(train["sites"]) == 4 and train["rejected"] == []  # it was never admitted, so never sent work
    errors = [r for r in recs if r.get("event") == "join-error"]
    assert len(errors) == 1 and "partition-id 4" in errors[0]["reason"]

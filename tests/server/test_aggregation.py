"""Role-aware aggregation on Flower's strategies (no Flower runtime)."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedProx

from server.aggregation import build_strategy
from server.grids import MembersGrid
from server.replies import ReplyChecker
from simulation.inprocess import InProcessGrid
from tests.server.conftest import reply, update
from uharmony import protocol as P
from uharmony.federation.config import RunConfig


def test_shared_averaged_by_cases_and_heads_by_domain(setup):
    roles, state = setup
    cfg = RunConfig.from_flwr({"strategy": "uharmony"})
    outer, strategy = build_strategy(cfg, roles, state)
    replies = [
        reply(update(roles, state, d, v), w, d, node=n, metrics={"train-loss": v})
        for n, (d, v, w) in enumerate([(0, 1.0, 1), (0, 3.0, 3), (1, 5.0, 4)])
    ]
    accepted, parsed, rejected = ReplyChecker(roles, state, update_norm_factor=0, max_relative_update=0).screen(replies)
    assert rejected == [] and [r.site for r in parsed] == ["s0", "s1", "s2"]
    arrays, metrics = outer.aggregate_train(1, accepted)
    new = strategy.global_state
    shared = roles.keys("shared")[0]
    torch.testing.assert_close(new[shared], torch.full_like(state[shared], (1 * 1 + 3 * 3 + 5 * 4) / 8))
    torch.testing.assert_close(new[roles.domain_keys(0)[0]], torch.full_like(state[roles.domain_keys(0)[0]], 2.5))
    torch.testing.assert_close(new[roles.domain_keys(1)[0]], torch.full_like(state[roles.domain_keys(1)[0]], 5.0))
    assert set(arrays.keys()) == set(roles.global_keys())
    assert metrics["train-loss"] == pytest.approx((1 * 1 + 3 * 3 + 5 * 4) / 8)  # weighted by training cases


def test_fedprox_comes_from_flower_and_sends_mu(setup):
    """The table names Flower's FedProx: its configure_train puts proximal-mu in every train message."""
    roles, state = setup
    cfg = RunConfig.from_flwr({"strategy": "fedprox", "proximal-mu": 0.25})
    outer, strategy = build_strategy(cfg, roles, state)
    assert isinstance(outer, FedProx) and outer is strategy
    grid = InProcessGrid(None, [{"partition-id": 0}, {"partition-id": 1}])
    messages = list(outer.configure_train(3, ArrayRecord(state), ConfigRecord({}), MembersGrid(grid, [1001])))
    assert [m.metadata.dst_node_id for m in messages] == [1001]  # only the members the engine chose
    assert messages[0].content[P.CONFIG][P.PROXIMAL_MU] == 0.25 and messages[0].content[P.CONFIG][P.SERVER_ROUND] == 3


def test_dp_wraps_the_role_aware_strategy(setup):
    roles, state = setup
    outer, strategy = build_strategy(
        RunConfig.from_flwr({"strategy": "fedavg", "dp-noise-multiplier": 0.5}), roles, state
    )
    assert outer is not strategy and outer.strategy is strategy

"""Role-aware aggregation on Flower's strategies and the screening of bad replies (no Flower runtime)."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedProx
from flwr.supercore.task_identity import TaskIdentity

from server.aggregation import RejectedUpdate, ReplyChecker, build_strategy
from server.rounds import MembersGrid
from simulation.inprocess import InProcessGrid
from uharmony import build_model
from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, global_state_of


@pytest.fixture
def setup():
    model = build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), stem_channels=4)
    roles = ModelRoles(model, "uharmony")
    return roles, global_state_of(model, roles)


def _reply(arrays, weight=2, domain=0, node=7):
    """A train reply as a site's ClientApp sends it."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    request = Message(RecordDict(), node, "train")
    request.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict(
        {
            P.ARRAYS: ArrayRecord(arrays),
            P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight}),
            P.SITE: ConfigRecord({P.SITE_ID: f"s{node}", P.DOMAIN_ID: domain}),
        }
    )
    return Message(content, reply_to=request)


def _update(roles, state, domain, value):
    return {k: torch.full_like(state[k], value) for k in roles.outgoing_keys(domain)}


def test_good_reply_passes(setup):
    roles, state = setup
    reply = ReplyChecker(roles, state).check(_reply(_update(roles, state, 1, 0.5), 2, 1))
    assert reply.weight == 2 and reply.site == "s7" and reply.domain == 1
    assert set(reply.arrays) == set(roles.outgoing_keys(1))


def _corrupt(kind, roles, state):
    arrays = _update(roles, state, 0, 0.1)
    key = roles.keys("shared")[0]
    if kind in ("nan", "inf"):
        arrays[key] = arrays[key].clone()
        arrays[key].view(-1)[0] = float(kind)
    elif kind == "missing":
        del arrays[key]
    elif kind == "extra-local":
        arrays[roles.keys("local")[0]] = torch.zeros(3)  # a harmonization statistic must never arrive
    elif kind == "other-domain":
        arrays.update({k: state[k] for k in roles.domain_keys(1)})
    elif kind == "shape":
        arrays[key] = torch.zeros((1, *arrays[key].shape))
    elif kind == "dtype":
        arrays[key] = arrays[key].double()
    return arrays


@pytest.mark.parametrize(
    "kind, words",
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("missing", "missing"),
        ("extra-local", "extra"),
        ("other-domain", "extra"),
        ("shape", "shape/dtype"),
        ("dtype", "shape/dtype"),
    ],
)
def test_bad_update_is_rejected(setup, kind, words):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match=words):
        ReplyChecker(roles, state).check(_reply(_corrupt(kind, roles, state)))


@pytest.mark.parametrize("weight", [0, -3, float("inf"), float("nan")])
def test_bad_weight_is_rejected(setup, weight):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match=P.NUM_EXAMPLES):
        ReplyChecker(roles, state).check(_reply(_update(roles, state, 0, 0.1), weight))


def test_shared_averaged_by_cases_and_heads_by_domain(setup):
    roles, state = setup
    cfg = RunConfig.from_flwr({"strategy": "uharmony"})
    outer, strategy = build_strategy(cfg, roles, state)
    replies = [
        _reply(_update(roles, state, d, v), w, d, node=n)
        for n, (d, v, w) in enumerate([(0, 1.0, 1), (0, 3.0, 3), (1, 5.0, 4)])
    ]
    accepted, parsed, rejected = ReplyChecker(roles, state, update_norm_factor=0).screen(replies)
    assert rejected == [] and [r.site for r in parsed] == ["s0", "s1", "s2"]
    arrays, metrics = outer.aggregate_train(1, accepted)
    new = strategy.global_state
    shared = roles.keys("shared")[0]
    torch.testing.assert_close(new[shared], torch.full_like(state[shared], (1 * 1 + 3 * 3 + 5 * 4) / 8))
    torch.testing.assert_close(new[roles.domain_keys(0)[0]], torch.full_like(state[roles.domain_keys(0)[0]], 2.5))
    torch.testing.assert_close(new[roles.domain_keys(1)[0]], torch.full_like(state[roles.domain_keys(1)[0]], 5.0))
    assert set(arrays.keys()) == set(roles.global_keys()) and metrics is not None


def test_outlier_norm_rejected_and_round_continues(setup):
    roles, state = setup
    replies = [
        _reply({k: state[k] + delta for k in roles.outgoing_keys(0)}, node=n)
        for n, delta in enumerate([0.01, 0.012, 0.011, 50.0])
    ]
    accepted, parsed, rejected = ReplyChecker(roles, state, update_norm_factor=5.0).screen(replies)
    assert len(accepted) == 3 and [r["node"] for r in rejected] == [3] and "update norm" in rejected[0]["reason"]


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

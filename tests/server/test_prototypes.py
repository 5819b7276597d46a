"""Prototype replies: merged per domain as if pooled over the scans; a bad reply is named and skipped."""

import pytest
import torch

from server.prototypes import check_prototype_reply, refresh_prototypes
from tests.server.conftest import reply
from uharmony.gating import merge_prototypes

MEMBERS = {7: {"site": "s7", "domain": 0, "train_cases": 6}, 8: {"site": "s8", "domain": 1, "train_cases": 6}}


def _proto(roles, state, domain, mean, var, count, reach=40.0):
    m, v, c, r = roles.prototypes[domain]
    return {
        m: torch.full_like(state[m], mean),
        v: torch.full_like(state[v], var),
        c: torch.tensor(float(count)),
        r: torch.tensor(float(reach)),
    }


class ReplyGrid:
    """Answers each prototype query with a prepared reply (as the sites' ClientApps would)."""

    def __init__(self, replies):
        self.replies, self.asked = replies, []

    def send_and_receive(self, messages, timeout=None):
        self.asked = [m.metadata.dst_node_id for m in messages]
        return self.replies


def test_merge_is_the_pooled_mean_and_variance():
    a, b = torch.randn(4, 3), torch.randn(6, 3) + 2.0
    mean, var, n = merge_prototypes(
        [(a.mean(0), a.var(0, unbiased=False), 4), (b.mean(0), b.var(0, unbiased=False), 6)]
    )
    both = torch.cat([a, b])
    torch.testing.assert_close(mean, both.mean(0))
    torch.testing.assert_close(var, both.var(0, unbiased=False))
    assert n == 10


def test_refresh_merges_each_domain_and_skips_a_bad_reply(setup):
    roles, state = setup
    bad = _proto(roles, state, 1, 0.0, -1.0, 2)  # a negative variance
    grid = ReplyGrid(
        [
            reply(_proto(roles, state, 0, 1.0, 0.5, 2), domain=0, node=7),
            reply(bad, domain=1, node=8),
        ]
    )
    new, rejected, domains = refresh_prototypes(grid, MEMBERS, roles, state, {}, 10.0)
    assert grid.asked == [7, 8] and domains == [0]
    assert len(rejected) == 1 and rejected[0]["node"] == 8 and "variance" in rejected[0]["reason"]
    m, v, c, r = roles.prototypes[0]
    assert float(new[m].mean()) == 1.0 and float(new[v].mean()) == 0.5 and float(new[c]) == 2.0
    assert float(new[r]) == 40.0
    assert all(torch.equal(new[k], state[k]) for k in roles.prototypes[1])  # untouched


@pytest.mark.parametrize("reaches, merged", [((30.0, 50.0), 50.0), ((30.0, 0.0), 0.0)])
def test_a_domain_keeps_its_sites_largest_reach_and_none_if_one_is_unknown(setup, reaches, merged):
    roles, state = setup
    members = {7: MEMBERS[7], 9: {"site": "s9", "domain": 0, "train_cases": 6}}
    grid = ReplyGrid(
        [
            reply(_proto(roles, state, 0, 1.0, 0.5, 2, reaches[0]), domain=0, node=7),
            reply(_proto(roles, state, 0, 3.0, 0.5, 2, reaches[1]), domain=0, node=9, site="s9"),
        ]
    )
    new, rejected, domains = refresh_prototypes(grid, members, roles, state, {}, 10.0)
    assert not rejected and domains == [0]
    m, v, c, r = roles.prototypes[0]
    assert float(new[m].mean()) == 2.0 and float(new[c]) == 4.0 and float(new[r]) == merged


@pytest.mark.parametrize(
    "kind, words",
    [
        ("other-domain", "differ"),
        ("weights", "differ"),
        ("nan", "NaN"),
        ("negative-variance", "cannot be negative"),
        ("negative-reach", "cannot be negative"),
        ("infinite-reach", "NaN or Inf"),
        ("too-many-scans", "training scans"),
        ("fractional-count", "training scans"),
        ("shape", "shape/dtype"),
        ("lying-domain", "admitted in domain"),
    ],
)
def test_bad_prototype_replies_are_rejected_with_a_reason(setup, kind, words):
    roles, state = setup
    arrays, domain = _proto(roles, state, 0, 0.1, 0.2, 3), 0
    m, v, c, r = roles.prototypes[0]
    if kind == "other-domain":
        arrays = _proto(roles, state, 1, 0.1, 0.2, 3)
    elif kind == "weights":
        arrays[roles.keys("shared")[0]] = state[roles.keys("shared")[0]]
    elif kind == "nan":
        arrays[m] = arrays[m].clone()
        arrays[m][0] = float("nan")
    elif kind == "negative-variance":
        arrays[v] = -arrays[v].abs() - 0.1
    elif kind == "negative-reach":
        arrays[r] = torch.tensor(-1.0)
    elif kind == "infinite-reach":
        arrays[r] = torch.tensor(float("inf"))
    elif kind == "too-many-scans":
        arrays[c] = torch.tensor(7.0)
    elif kind == "fractional-count":
        arrays[c] = torch.tensor(2.5)
    elif kind == "shape":
        arrays[v] = torch.zeros(2)
    elif kind == "lying-domain":
        domain = 1
    with pytest.raises(Exception, match=words):
        check_prototype_reply(reply(arrays, domain=domain, node=7), MEMBERS[7], roles, state, 6)

"""Prototype replies: merged per domain as if pooled over the scans; a bad reply is named and skipped."""

import pytest
import torch

from server.prototypes import check_prototype_reply, refresh_prototypes
from server.replies import RejectedUpdate
from tests.server.conftest import reply
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of
from uharmony.model.gating import merge_prototypes

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


def _three_domains(centres=None):
    """A scan-gated model of three domains whose prototypes were set from 16 scans around distinct centres;
    (model, roles, its state, scans of domain 0, a point far from every domain)."""
    model = RunConfig(filters=(8, 16, 32), gate_unseen="shared").build_model(3).eval()
    head, roles = model.head, ModelRoles(model, "uharmony")
    width = head.experts[0].prototype.numel()
    torch.manual_seed(0)
    centres = centres or [torch.randn(width) * 3 for _ in range(3)]
    for d in range(3):
        head.experts[d].set_prototype(centres[d] + torch.randn(16, width))
    return model, roles, global_state_of(model, roles), centres[0] + torch.randn(200, width), centres[0] + 40


def _copy_of_domain0(roles, state, domain=2, count=100_000.0, reach=0.0):
    m, v, c, r = roles.prototypes[domain]
    m0, v0, _, _ = roles.prototypes[0]
    return {m: state[m0].clone(), v: state[v0].clone(), c: torch.tensor(count), r: torch.tensor(reach)}


def _load(head, state):
    head.load_state_dict(
        {**head.state_dict(), **{k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}}
    )


def test_a_copied_prototype_and_a_zero_reach_are_rejected():
    """Issue 29, F11 (the probe): a site alone in domain 2 sends domain 0's prototype (every site receives it)
    with 100,000 scans and a reach of 0; it took half of domain 0's gate weight and switched the "none of
    these" test off for every domain. Now the copy is rejected, a domain's first prototype may not lie within
    another's reach, an unknown reach is its own domain's alone, and a reach of 1e30 is rejected."""
    model, roles, state, own_scans, far = _three_domains()
    head = model.head
    far = far + torch.randn(50, far.numel())
    evil = {"site": "evil", "domain": 2, "train_cases": 100_000}
    copy = reply(_copy_of_domain0(roles, state), domain=2, node=9, site="evil")
    with pytest.raises(RejectedUpdate, match="the prototype of domain 2 moves onto domain 0's"):
        check_prototype_reply(copy, evil, roles, state, 100_000)
    first = dict(state)  # domain 2 has no prototype yet (a site that joined): it may not start on domain 0's
    first[roles.prototypes[2][2]] = torch.tensor(0.0)
    with pytest.raises(RejectedUpdate, match="first prototype of domain 2 lies within domain 0's reach"):
        copy = reply(_copy_of_domain0(roles, first), domain=2, node=9, site="evil")
        check_prototype_reply(copy, evil, roles, first, 100_000)
    # through the refresh: the copy is skipped, domain 0 keeps its gate weight, far scans stay "none of these"
    new, rejected, domains = refresh_prototypes(ReplyGrid([copy]), {9: evil}, roles, state, {}, 10.0)
    assert domains == [] and "moves onto domain 0's" in rejected[0]["reason"]
    _load(head, new)
    assert float(head.gate(own_scans)[:, 0].mean()) > 0.9 and bool(head.beyond_reach(far).all())
    # a reach of 0 (unknown) from one domain: the test still runs on the others
    flagged = head.beyond_reach(own_scans)  # a domain's own atypical scans: about 1/(n + 1) of them
    head.experts[2].reach.fill_(0.0)
    assert bool(head.beyond_reach(far).all()) and torch.equal(head.beyond_reach(own_scans), flagged)
    # a reach of 1e30, or a variance of 1e30, that would claim every scan: rejected, the domain keeps its own
    m, v, c, r = roles.prototypes[2]
    for huge in ({r: torch.tensor(1e30)}, {v: torch.full_like(state[v], 1e30)}):
        own = {m: state[m].clone(), v: state[v].clone(), c: state[c].clone(), r: state[r].clone(), **huge}
        grid = ReplyGrid([reply(own, domain=2, node=9, site="evil")])
        new, rejected, domains = refresh_prototypes(grid, {9: evil}, roles, state, {}, 10.0)
        assert domains == [] and "reach of domain 2 newly covers domain 0's prototype" in rejected[0]["reason"]
        assert all(torch.equal(new[k], state[k]) for k in (m, v, r))
        _load(head, new)
        assert bool(head.beyond_reach(far).all())
    # a variance of 1e30 with an unknown reach (no region to check) would flatten the gate for all: clipped
    own = {m: state[m].clone(), v: torch.full_like(state[v], 1e30), c: state[c].clone(), r: torch.tensor(0.0)}
    grid = ReplyGrid([reply(own, domain=2, node=9, site="evil")])
    new, rejected, domains = refresh_prototypes(grid, {9: evil}, roles, state, {}, 10.0)
    assert not rejected and domains == [2] and float(new[v].max()) < 1e3
    _load(head, new)
    assert float(head.gate(own_scans)[:, 0].mean()) > 0.9


def test_honest_prototypes_that_move_with_the_model_are_accepted_even_for_twin_domains():
    """The checks do not stop prototypes from following the trained model, even for two domains the gate
    can hardly tell apart (S3's two hospitals on near-identical scanners): every domain's descriptors move by
    more than the twins are apart, and their separation stays what it was."""
    torch.manual_seed(1)
    base = torch.randn(8 + 40) * 3
    twins = [base, base + 0.05 * torch.randn(base.numel()), torch.randn(base.numel()) * 3]
    _, roles, state, _, _ = _three_domains(twins)
    for drift in (0.5, 5.0):
        shift = drift * torch.randn(state[roles.prototypes[0][0]].numel())  # the model moved every descriptor
        replies, members = [], {}
        for d in range(3):
            m, v, c, r = roles.prototypes[d]
            moved = {m: state[m] + shift + 0.01 * torch.randn_like(state[m]), v: state[v], c: state[c], r: state[r]}
            replies.append(reply(moved, domain=d, node=10 + d, site=f"s{d}"))
            members[10 + d] = {"site": f"s{d}", "domain": d, "train_cases": 16}
        new, rejected, domains = refresh_prototypes(ReplyGrid(replies), members, roles, state, {}, 10.0)
        assert rejected == [] and domains == [0, 1, 2], rejected

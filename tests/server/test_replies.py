"""Every reply goes through one checker: malformed, lying or out-of-bounds replies are rejected, named,
and never raise in the server (the issue's probes, one by one)."""

import io
import math

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo

from server.aggregation import build_strategy
from server.registry import SiteRegistry
from server.replies import RejectedUpdate, ReplyChecker, check_evaluation
from tests.server.conftest import eval_reply, reply, request, update
from uharmony import protocol as P
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of

MEMBERS = {7: {"site": "s7", "domain": 0, "train_cases": 6}, 8: {"site": "s8", "domain": 1, "train_cases": 6}}


def _check(setup, msg, members=MEMBERS, **kw):
    roles, state = setup
    return ReplyChecker(roles, state, members, **kw).check(msg)


def test_a_good_reply_gets_its_identity_from_its_node(setup):
    roles, state = setup
    r = _check(setup, reply(update(roles, state, 1, 0.5), 4, 1, node=8))
    assert (r.site, r.domain, r.weight) == ("s8", 1, 4.0) and set(r.arrays) == set(roles.outgoing_keys(1))


def _corrupt(kind, roles, state):
    arrays = update(roles, state, 0, 0.1)
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
    elif kind == "torch-stype":  # an Array that claims another serialization than NumPy's
        record = ArrayRecord(arrays)
        record[key] = Array(dtype="float32", shape=tuple(arrays[key].shape), stype="torch", data=b"\x00" * 8)
        return record
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
        ("torch-stype", "NumPy"),
    ],
)
def test_bad_arrays_are_rejected(setup, kind, words):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match=words):
        _check(setup, reply(_corrupt(kind, roles, state)))


@pytest.mark.parametrize("weight", [0, -3, 2.5, float("inf"), float("nan"), 1e308, 1e9, 7, [2]])
def test_a_weight_must_be_a_whole_number_within_the_declared_cases(setup, weight):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match="num-examples"):
        _check(setup, reply(update(roles, state, 0, 0.1), weight))


def test_a_node_cannot_speak_for_another_site_or_domain(setup):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match="admitted as site 's7' but claims 's8'"):
        _check(setup, reply(update(roles, state, 0, 0.1), site="s8"))
    with pytest.raises(RejectedUpdate, match="admitted in domain 0 but claims domain '1'"):  # the probed attack
        _check(setup, reply(update(roles, state, 1, 0.1), domain=1))
    with pytest.raises(RejectedUpdate, match="domain 'x'"):
        _check(setup, reply(update(roles, state, 0, 0.1), domain="x"))
    with pytest.raises(RejectedUpdate, match="not a member"):
        _check(setup, reply(update(roles, state, 0, 0.1), node=99))


@pytest.mark.parametrize(
    "metrics, words", [({"train-loss": [1.0, 2.0]}, "train-loss"), ({"seconds": float("inf")}, "seconds")]
)
def test_malformed_training_metrics(setup, metrics, words):
    roles, state = setup
    with pytest.raises(RejectedUpdate, match=words):
        _check(setup, reply(update(roles, state, 0, 0.1), metrics=metrics))


def test_a_huge_update_is_rejected_even_with_one_or_two_replies(setup):
    roles, state = setup
    honest = {k: state[k] + 0.01 for k in roles.outgoing_keys(0)}
    attack = {k: state[k] * 10_000 for k in roles.outgoing_keys(1)}  # the probed 10,000x update
    checker = ReplyChecker(roles, state, MEMBERS)
    accepted, parsed, rejected = checker.screen([reply(honest), reply(attack, domain=1, node=8)])
    assert [r.site for r in parsed] == ["s7"] and "global model's norm" in rejected[0]["reason"]
    # later rounds with one reply: bounded by the norms accepted before
    late = ReplyChecker(roles, state, MEMBERS, history=checker.history, max_relative_update=0)
    big = {k: state[k] + 0.5 for k in roles.outgoing_keys(0)}
    assert "x median" in late.screen([reply(big)])[2][0]["reason"]


def test_under_dp_an_unchanged_model_is_rejected_instead_of_dividing_by_zero(setup):
    roles, state = setup
    same = {k: state[k].clone() for k in roles.outgoing_keys(0)}
    _, parsed, rejected = ReplyChecker(roles, state, MEMBERS, reject_unchanged=True).screen([reply(same)])
    assert parsed == [] and "does not change the model" in rejected[0]["reason"]


def test_client_errors_and_garbage_never_raise(setup):
    roles, state = setup
    from flwr.app import Error, Message

    from tests.server.conftest import request

    error = Message(Error(0, "boom"), reply_to=request(7))
    _, parsed, rejected = ReplyChecker(roles, state, MEMBERS).screen([error, reply({}, 2)])
    assert parsed == [] and [r["reason"][:12] for r in rejected] == ["client error", "keys differ "]


REGIONS = ["ET", "TC", "WT"]


@pytest.mark.parametrize(
    "metrics, words",
    [
        ({"dice-wt-gated": 1e6}, "dice-wt-gated"),
        ({"dice-wt-gated": -0.5}, "dice-wt-gated"),
        ({"hd95-wt-gated": -3.0}, "hd95-wt-gated"),
        ({"dice-et-gated": float("nan")}, "dice-et-gated"),
        ({"num-examples": [1, 2]}, "num-examples"),
        ({"dice-rc-gated": 0.5}, "region the model does not have"),
        ({"presence-wt-gated": 1.5}, "presence-wt-gated"),  # UMS-Rep: an accuracy
        ({"psnr-denoised-1": float("inf")}, "psnr-denoised-1"),  # phase P's scores
        ({"ssim-noisy-0": 2.0}, "ssim-noisy-0"),
        ({"val-loss": -1.0}, "val-loss"),
        ({"type-accuracy-gated": 1.5}, "type-accuracy-gated"),  # the type head's accuracy
        ({"type-cases": -2}, "type-cases"),
        ({"type-cases": 2.5}, "a whole number"),
        ({"type-cases": 9, "num-examples": 3}, "a whole number of the site's validation scans"),
        ({"type-accuracy-gated": 0.5}, "without the 'type-cases'"),
        ({"type-accuracy-gated": 0.5, "type-cases": 0}, "without the 'type-cases'"),
    ],
)
def test_bad_evaluation_replies(metrics, words):
    with pytest.raises(RejectedUpdate, match=words):
        check_evaluation(eval_reply(metrics), MEMBERS[7], REGIONS)


def test_an_evaluation_reply_is_filed_under_the_admitted_site():
    with pytest.raises(RejectedUpdate, match="claims 's8'"):  # the probed overwrite of another site's Dice
        check_evaluation(eval_reply({"dice-wt-gated": 0.9}, site="s8"), MEMBERS[7], REGIONS)
    site, metrics = check_evaluation(
        eval_reply({"dice-wt-gated": 0.9, "dice-et-gated": -1.0, "x": 3.0}), MEMBERS[7], REGIONS
    )
    assert site == "s7" and metrics == {"dice-wt-gated": 0.9, "dice-et-gated": -1.0}
    _, typed = check_evaluation(eval_reply({"type-accuracy-gated": 0.75, "type-cases": 4}), MEMBERS[7], REGIONS)
    assert typed == {"type-accuracy-gated": 0.75, "type-cases": 4}  # kept, not dropped as unknown
    assert np.isclose(metrics["dice-wt-gated"], 0.9)


def _header_only(shape, descr="<f4") -> bytes:
    """.npy bytes whose header declares ``shape`` and that hold nothing after it (the probe of issue 29, F5)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def test_an_array_whose_header_declares_4_TiB_is_rejected(setup):
    """numpy.load allocates what a header declares before reading: 2**40 floats were a MemoryError that ended
    the run (issue 29, F5). The header is read first, against the entry it must be; the round goes on."""
    roles, state = setup
    record = ArrayRecord(update(roles, state, 0, 0.1))
    key = list(record.keys())[0]
    record[key] = Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=_header_only((2**40,)))
    honest = reply(update(roles, state, 1, 0.1), domain=1, node=8)
    accepted, parsed, rejected = ReplyChecker(roles, state, MEMBERS).screen([reply(record), honest])
    assert [r.site for r in parsed] == ["s8"] and len(accepted) == 1
    assert rejected == [
        {
            "node": 7,
            "reason": f"{key}: the header declares (1099511627776,) float32 (4398046511104 bytes), 0 bytes follow it",
        }
    ]
    # a header that fits but is not the entry's shape is refused before its bytes are read as well
    record[key] = Array(np.zeros(3, np.float32))
    _, _, rejected = ReplyChecker(roles, state, MEMBERS).screen([reply(record)])
    assert f"{key}: shape/dtype (3,)/float32 instead of {tuple(state[key].shape)}/float32" == rejected[0]["reason"]


def _fedavg():
    cfg = RunConfig(strategy="fedavg", filters=(8, 16, 32))
    model = cfg.build_model(1)
    roles = ModelRoles(model, "fedavg")
    return cfg, roles, global_state_of(model, roles)


def _distance(a, b, keys) -> float:
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys))


def _profile_grid(tmp_path, declared: dict[int, tuple[str, int]]):
    """Node id -> (site, declared training cases): a grid whose nodes authenticate with keys and answer the
    profile query with those declarations."""
    from client.keys import generate_node_key

    keys = {n: generate_node_key(tmp_path / f"k{n}")[1] for n in declared}

    class ProfileGrid:
        def get_node_ids(self):
            return list(declared)

        def get_nodes(self):
            pem = {
                n: load_ssh_public_key(p.read_bytes()).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
                for n, p in keys.items()
            }
            return [NodeInfo(node_id=n, public_key=pem[n]) for n in declared]

        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                site, cases = declared[m.metadata.dst_node_id]
                profile = {P.SITE_ID: site, P.DOMAIN_ID: 0, P.MODALITIES: "t1", P.REGIONS: "WT", P.TRAIN_CASES: cases}
                out.append(
                    Message(
                        RecordDict({P.PROFILE: ConfigRecord(profile)}),
                        reply_to=request(m.metadata.dst_node_id, "query.profile"),
                    )
                )
            return out

    return ProfileGrid(), keys


def test_a_site_cannot_buy_the_average_with_its_case_count(tmp_path):
    """Issue 29, F6 (the probe's settings 2 and 2b, fedavg): a site's weight is its declared case count, which
    (a) may not exceed the cap the coordinator registered with its key (2b: 100,000 declared is refused at
    admission), and (b) weighs at most max-weight-ratio (3) x the median of the others' in any average: the
    stated bound on one site's share is 3m / (3m + sum of the others), 1/2 among four sites of 3 cases, where it
    held 99.99 %; (c) robust-aggregation = "median" keeps the shared entries within the honest sites' range."""
    from server.admission import Admission

    # (a) 2b at admission: the declared count is bounded by the cap registered with the key
    grid, keys = _profile_grid(tmp_path, {1: ("a", 3), 2: ("evil", 100_000)})
    registry = SiteRegistry(tmp_path / "registry.json")
    registry.add("a", 0, keys[1].read_text(), max_cases=40)
    registry.add("evil", 0, keys[2].read_text(), max_cases=40)
    admission = Admission(registry, 10.0)
    ready, events = admission.candidates(grid, 1)
    assert [p["site"] for _, p in ready] == ["a"]
    assert (
        "declares 100000 training cases, but the key of site 'evil' is registered for at most 40" in events[0]["reason"]
    )

    # (b) without a registry (a simulation) the weight is capped relative to the others
    cfg, roles, g = _fedavg()
    keys_ = roles.outgoing_keys(None)
    params = [k for k in keys_ if k in roles.parameters]
    torch.manual_seed(0)
    floats = [k for k in keys_ if g[k].is_floating_point()]
    honest = [{**g, **{k: g[k] + 0.01 * g[k].abs().mean() * torch.randn_like(g[k]) for k in floats}} for _ in range(3)]
    target = {k: torch.zeros_like(g[k]) if g[k].is_floating_point() else g[k] for k in keys_}
    step = min(1.0, 9.9 * _distance(honest[0], g, params) / _distance(target, g, params))
    evil = {k: g[k] + step * (target[k] - g[k]) if g[k].is_floating_point() else g[k] for k in keys_}
    members = {n: {"site": s, "domain": 0, "train_cases": 3} for n, s in ((1, "a"), (3, "b"), (4, "c"))}
    members[2] = {"site": "evil", "domain": 0, "train_cases": 100_000}
    replies = [reply(u, 3, node=n, site=s) for n, u, s in zip((1, 3, 4), honest, "abc")]
    replies.append(reply(evil, 100_000, node=2, site="evil"))
    accepted, parsed, rejected = ReplyChecker(roles, g, members).screen(replies)
    assert not rejected
    new = build_strategy(cfg, roles, g)[0].aggregate_train(1, accepted)[0].to_torch_state_dict()
    capped = {
        k: (3 * (honest[0][k] + honest[1][k] + honest[2][k]).double() + 9 * evil[k].double()) / 18 for k in params
    }
    assert all(torch.allclose(new[k].double(), capped[k], atol=1e-6) for k in params)  # the attacker's share: 1/2
    assert _distance(new, g, params) <= 0.5 * _distance(evil, g, params) + _distance(honest[0], g, params)

    # (c) the coordinate-wise median: bounded by the honest updates, whatever one site sends
    robust = RunConfig(strategy="fedavg", filters=(8, 16, 32), robust_aggregation="median")
    accepted, _, _ = ReplyChecker(roles, g, members).screen(replies)
    new = build_strategy(robust, roles, g)[0].aggregate_train(1, accepted)[0].to_torch_state_dict()
    for k in params:
        stack = torch.stack([h[k] for h in honest])
        assert bool(((new[k] >= stack.min(0).values - 1e-7) & (new[k] <= stack.max(0).values + 1e-7)).all()), k

"""Every reply goes through one checker: malformed, lying or out-of-bounds replies are rejected, named,
and never raise in the server (the issue's probes, one by one)."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from server.replies import RejectedUpdate, ReplyChecker, check_evaluation
from tests.server.conftest import eval_reply, reply, update

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
    assert np.isclose(metrics["dice-wt-gated"], 0.9)

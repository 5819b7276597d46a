"""Role-aware aggregation and the rejection of bad client updates (no Flower runtime needed)."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from client.records import to_record
from server.strategy import RejectedUpdate, RoleAwareFedAvg
from uharmony import build_model
from uharmony import protocol as P
from uharmony.federated import ModelRoles, to_numpy


@pytest.fixture
def setup():
    model = build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), stem_channels=4)
    roles = ModelRoles(model, "uharmony")
    state = to_numpy(model.state_dict(), roles.global_keys())
    return roles, state


def _update(roles, state, domain, value, weight=2):
    arrays = {k: np.full_like(state[k], value) for k in roles.outgoing_keys(domain)}
    return arrays, weight


def _reply(arrays, weight=2, domain=0):
    return RecordDict({P.ARRAYS: to_record(arrays), P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight}),
                       P.SITE: ConfigRecord({P.SITE_ID: f"s{domain}", P.DOMAIN_ID: domain})})


def test_good_reply_passes(setup):
    roles, state = setup
    strat = RoleAwareFedAvg(roles, state)
    arrays, w = _update(roles, state, 1, 0.5)
    got, weight, _, ident = strat.check_reply(_reply(arrays, w, 1))
    assert weight == 2 and ident[P.SITE_ID] == "s1" and set(got) == set(arrays)


def _corrupt(kind, roles, state):
    arrays, _ = _update(roles, state, 0, 0.1)
    key = roles.keys("shared")[0]
    if kind == "nan":
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
    elif kind == "inf":
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.inf
    elif kind == "missing":
        del arrays[key]
    elif kind == "extra-local":
        local = roles.keys("local")[0]  # a harmonization statistic must never arrive
        arrays[local] = np.zeros(3, np.float32)
    elif kind == "other-domain":
        arrays.update({k: state[k] for k in roles.domain_keys(1)})
    elif kind == "shape":
        arrays[key] = np.zeros((1,) + arrays[key].shape, arrays[key].dtype)
    elif kind == "dtype":
        arrays[key] = arrays[key].astype(np.float64)
    return arrays


@pytest.mark.parametrize("kind, words", [
    ("nan", "NaN or Inf"), ("inf", "NaN or Inf"), ("missing", "missing"), ("extra-local", "extra"),
    ("other-domain", "extra"), ("shape", "shape/dtype"), ("dtype", "shape/dtype"),
])
def test_bad_update_is_rejected(setup, kind, words):
    roles, state = setup
    strat = RoleAwareFedAvg(roles, state)
    with pytest.raises(RejectedUpdate, match=words):
        strat.check_reply(_reply(_corrupt(kind, roles, state)))


def test_bad_weight_is_rejected(setup):
    roles, state = setup
    arrays, _ = _update(roles, state, 0, 0.1)
    with pytest.raises(RejectedUpdate, match=P.NUM_EXAMPLES):
        RoleAwareFedAvg(roles, state).check_reply(_reply(arrays, 0))


def test_shared_averaged_by_cases_and_heads_by_domain(setup):
    roles, state = setup
    strat = RoleAwareFedAvg(roles, state)
    ups = []
    for node, (domain, value, weight) in enumerate([(0, 1.0, 1), (0, 3.0, 3), (1, 5.0, 4)]):
        arrays, _ = _update(roles, state, domain, value)
        ups.append((node, arrays, float(weight), {P.NUM_EXAMPLES: weight}, {P.SITE_ID: f"n{node}", P.DOMAIN_ID: domain}))
    strat.update_norm_factor = 0  # values are far from the initial weights on purpose
    arrays, metrics = strat.aggregate_updates(1, ups)
    new = strat.global_state
    shared = roles.keys("shared")[0]
    np.testing.assert_allclose(new[shared], (1 * 1 + 3 * 3 + 5 * 4) / 8, rtol=1e-6)
    np.testing.assert_allclose(new[roles.domain_keys(0)[0]], (1 * 1 + 3 * 3) / 4, rtol=1e-6)
    np.testing.assert_allclose(new[roles.domain_keys(1)[0]], 5.0, rtol=1e-6)
    assert set(arrays.keys()) == set(roles.global_keys())
    assert metrics is not None


def test_outlier_norm_rejected_and_round_continues(setup):
    roles, state = setup
    strat = RoleAwareFedAvg(roles, state, update_norm_factor=5.0)
    ups = []
    for node, delta in enumerate([0.01, 0.012, 0.011, 50.0]):
        arrays = {k: state[k] + np.asarray(delta, state[k].dtype) for k in roles.outgoing_keys(0)}
        ups.append((node, arrays, 2.0, {P.NUM_EXAMPLES: 2}, {P.SITE_ID: f"n{node}", P.DOMAIN_ID: 0}))
    arrays, _ = strat.aggregate_updates(1, ups)
    assert arrays is not None
    assert [r["node"] for r in strat.last_report["rejected"]] == [3]
    assert "update norm" in strat.last_report["rejected"][0]["reason"]
    shared = roles.keys("shared")[0]
    assert np.abs(strat.global_state[shared] - state[shared]).max() < 0.02


def test_too_few_sites_keeps_model(setup):
    roles, state = setup
    strat = RoleAwareFedAvg(roles, state, min_sites=2)
    arrays, _ = _update(roles, state, 0, 1.0)
    assert strat.aggregate_updates(1, [(0, arrays, 1.0, {P.NUM_EXAMPLES: 1}, {P.DOMAIN_ID: 0})]) == (None, None)
    shared = roles.keys("shared")[0]
    np.testing.assert_array_equal(strat.global_state[shared], state[shared])

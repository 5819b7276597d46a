"""Differential privacy: epsilon reported per round with Flower's RDP accountant, a budget that stops the
run, and client failures or unchanged models that no longer break a round."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from server.aggregation import build_strategy
from server.grids import MembersGrid
from server.privacy import PrivacyLedger
from server.replies import ReplyChecker
from simulation.inprocess import InProcessGrid
from tests.server.conftest import reply
from tests.server.test_rounds import _run
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of
from uharmony.records.runlog import RunLog

DP = dict(strategy="fedavg", dp_noise_multiplier=1.0, dp_clipping_norm=5.0)


def test_epsilon_is_reported_every_round_and_at_the_end(tiny_federation, tmp_path):
    _run(tiny_federation, tmp_path / "dp", num_server_rounds=2, **DP)
    recs = RunLog(tmp_path / "dp").records()
    eps = [r["privacy"]["epsilon"] for r in recs if r.get("event") == "train"]
    ledger = PrivacyLedger(1.0, 1e-5)
    expected = [ledger.spend(4)["epsilon"], ledger.spend(4)["epsilon"]]
    assert eps == expected and 0 < eps[0] < eps[1]
    done = RunLog(tmp_path / "dp").done()
    assert done["privacy"]["epsilon"] == eps[1] and done["privacy"]["delta"] == 1e-5


def test_the_run_stops_before_spending_more_than_the_budget(tiny_federation, tmp_path):
    ledger = PrivacyLedger(1.0, 1e-5)
    one, two = ledger.spend(4)["epsilon"], ledger.spend(4)["epsilon"]
    _run(tiny_federation, tmp_path / "budget", num_server_rounds=3, dp_max_epsilon=(one + two) / 2, **DP)
    recs = RunLog(tmp_path / "budget").records()
    trains = [r for r in recs if r.get("event") == "train"]
    assert [r["round"] for r in trains] == [1, 2] and trains[1].get("dp-stopped")
    done = RunLog(tmp_path / "budget").done()
    assert done["privacy"]["epsilon"] == one <= (one + two) / 2 and "dp-max-epsilon" in done["stopped"]


def test_a_failing_site_under_dp_costs_its_reply_not_the_round(tiny_federation, tmp_path):
    _run(tiny_federation, tmp_path / "fail", fail_train=(1002,), num_server_rounds=1, **DP)
    train = next(r for r in RunLog(tmp_path / "fail").records() if r.get("event") == "train")
    assert sorted(train["sites"]) == ["1", "2", "4"] and len(train["rejected"]) == 1
    assert train["privacy"]["epsilon"] == PrivacyLedger(1.0, 1e-5).spend(3)["epsilon"]


def test_resume_keeps_the_privacy_spent(tiny_federation, tmp_path):
    run_dir = tmp_path / "resume"
    _run(tiny_federation, run_dir, num_server_rounds=1, **DP)
    _run(tiny_federation, run_dir, num_server_rounds=2, resume=True, **DP)
    ledger = PrivacyLedger(1.0, 1e-5)
    ledger.spend(4)
    assert RunLog(run_dir).done()["privacy"]["epsilon"] == ledger.spend(4)["epsilon"]


def _gaussian_epsilon(sigma: float, releases: int, delta: float) -> float:
    """The (epsilon, delta) of ``releases`` Gaussian mechanisms of noise multiplier ``sigma``, computed here and
    not by the ledger: Renyi DP alpha * T / (2 sigma^2) (Mironov 2017, Prop. 7 and composition), turned into
    epsilon by the conversion of Canonne, Kamath & Steinke (2020, Prop. 12), minimised over alpha on a fine grid."""
    alpha = np.linspace(1.001, 2000.0, 400_000)
    rdp = releases * alpha / (2 * sigma**2)
    return float(np.min(rdp + np.log1p(-1 / alpha) - (np.log(delta) + np.log(alpha)) / (alpha - 1)))


def test_dp_aggregation_is_unweighted_or_accounted_for_the_largest_site():
    """Issue 29, F7: the ledger accounted sigma, but the average weighted site i by its cases, so its noise
    multiplier was sigma * sum(w) / (n * w_i) (S2 sizes, sigma 1, 16 rounds: reported 25.9, true 57.2). Under
    DP every reply now weighs the same (the aggregate is the unweighted mean of the clipped updates), and the
    ledger accounts any weights it is given at the worst site's multiplier; both checked against an
    independent computation of the Gaussian mechanism's privacy."""
    model = RunConfig(strategy="fedavg", filters=(8, 16, 32)).build_model(1)
    roles = ModelRoles(model, "fedavg")
    state = global_state_of(model, roles)
    cfg = RunConfig(strategy="fedavg", filters=(8, 16, 32), dp_noise_multiplier=1e-9, dp_clipping_norm=1e3)
    outer, inner = build_strategy(cfg, roles, state)
    weights, values = [12, 8, 6, 4, 4], [0.01, 0.02, 0.03, 0.04, 0.05]
    members = {n: {"site": f"s{n}", "domain": 0, "train_cases": w} for n, w in enumerate(weights)}
    replies = [reply({k: state[k] + v for k in state}, w, node=n) for n, (w, v) in enumerate(zip(weights, values))]
    accepted, parsed, rejected = ReplyChecker(roles, state, members).screen(replies)
    assert not rejected and len(accepted) == 5
    nodes = MembersGrid(InProcessGrid(None, [{}] * 5), [1000 + n for n in range(5)])
    list(outer.configure_train(1, ArrayRecord(state), ConfigRecord({}), nodes))  # the wrapper keeps the global model
    outer.num_sampled_clients = 5
    new = outer.aggregate_train(1, accepted)[0].to_torch_state_dict()
    key = next(k for k in state if state[k].is_floating_point())
    unweighted, weighted = sum(values) / 5, sum(w * v for w, v in zip(weights, values)) / sum(weights)
    torch.testing.assert_close(new[key] - state[key], torch.full_like(state[key], unweighted), atol=1e-6, rtol=0)
    assert abs(unweighted - weighted) > 1e-3  # the two differ: the test tells them apart
    assert inner.weights([r.weight for r in parsed]) == [1.0] * 5

    delta = 1e-5
    for sigma, rounds in ((1.0, 16), (2.0, 4)):
        equal, ledger = PrivacyLedger(sigma, delta), PrivacyLedger(sigma, delta)
        for _ in range(rounds):
            equal.spend([1.0] * 5)
            ledger.spend(weights)  # were the replies weighted by cases: the largest site's multiplier
        worst = sigma * sum(weights) / (5 * max(weights))
        for spent, s in ((equal.spent(), sigma), (ledger.spent(), worst)):
            independent = _gaussian_epsilon(s, rounds, delta)
            assert independent <= spent["epsilon"] + 1e-3 <= independent * 1.01 + 1e-3, (s, spent, independent)
        assert ledger.spent()["worst-site-noise-multiplier"] == pytest.approx(worst, abs=1e-6)


def test_a_plan_that_sends_part_of_the_model_is_clipped_and_noised_on_what_it_sent():
    """UMS-Rep under differential privacy: replies carry the trained entries only (here every key but the
    segmentation head's). Each reply's update is clipped over its own entries, the noise reaches those entries
    only, and an unsent entry stays exactly as it was (Flower's wrapper pairs arrays by position: it would
    clip the wrong pairs)."""
    model = RunConfig(strategy="fedavg", filters=(8, 16, 32)).build_model(1)
    roles = ModelRoles(model, "fedavg")
    state = global_state_of(model, roles)
    sent = [k for k in state if not k.startswith("head.") and state[k].is_floating_point()]
    kept = [k for k in state if k.startswith("head.")]
    assert sent and kept
    clip = 0.5
    cfg = RunConfig(strategy="fedavg", filters=(8, 16, 32), dp_noise_multiplier=1e-9, dp_clipping_norm=clip)
    outer, _ = build_strategy(cfg, roles, state)
    nodes = MembersGrid(InProcessGrid(None, [{}] * 2), [1000, 1001])
    list(outer.configure_train(1, ArrayRecord(state), ConfigRecord({}), nodes))
    outer.num_sampled_clients = 2
    big = [reply({k: state[k] + 1.0 for k in sent}, 3, node=n) for n in range(2)]  # far beyond the clip
    new = outer.aggregate_train(1, big)[0].to_torch_state_dict()
    moved = torch.sqrt(sum(((new[k] - state[k]).double() ** 2).sum() for k in sent))
    assert float(moved) == pytest.approx(clip, rel=1e-3)  # both clipped to C over their own entries, averaged
    assert all(torch.equal(new[k], state[k]) for k in kept)  # no noise on what nobody sent
    cfg = RunConfig(strategy="fedavg", filters=(8, 16, 32), dp_noise_multiplier=1.0, dp_clipping_norm=clip)
    outer, _ = build_strategy(cfg, roles, state)
    list(outer.configure_train(1, ArrayRecord(state), ConfigRecord({}), nodes))
    outer.num_sampled_clients = 2
    same = [reply({k: state[k] + 1e-6 for k in sent}, 3, node=n) for n in range(2)]  # well inside the clip
    noisy = outer.aggregate_train(1, same)[0].to_torch_state_dict()
    spread = torch.cat([(noisy[k] - state[k]).flatten() for k in sent]).std()
    assert float(spread) == pytest.approx(1.0 * clip / 2, rel=0.1) and all(
        torch.equal(noisy[k], state[k]) for k in kept
    )


def test_phase_p_and_plans_are_accepted_under_differential_privacy():
    p = RunConfig.from_flwr({"strategy": "fedavg", "dp-noise-multiplier": 1.0, "phase": "pretrain"})
    f = RunConfig.from_flwr(
        {"strategy": "fedavg", "dp-noise-multiplier": 1.0, "finetune": "independent", "tasks": "presence"}
    )
    assert p.dp_noise_multiplier == f.dp_noise_multiplier == 1.0 and p.uses_plan and f.uses_plan
    with pytest.raises(ValueError, match="pooled"):
        RunConfig.from_flwr({"strategy": "centralized", "phase": "pretrain"})

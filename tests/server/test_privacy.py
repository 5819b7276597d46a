"""Differential privacy: epsilon reported per round with Flower's RDP accountant, a budget that stops the
run, and client failures or unchanged models that no longer break a round."""

from server.privacy import PrivacyLedger
from tests.server.test_rounds import _run
from uharmony.runlog import RunLog

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

"""The site's round: state kept at the site belongs to one run."""

import torch

from tests.conftest import tiny_overrides
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, global_state_of
from uharmony.site_round import SiteRound
from uharmony.site_state import load_optimizer_state


def _job(cfg, spec, run_id):
    job = SiteRound({"partition-id": 0}, cfg, spec, "uharmony", run_id=run_id)
    model = cfg.build_model(4)
    job.load(global_state_of(model, ModelRoles(model, "uharmony")))
    return job


def test_site_state_of_another_run_is_not_reused(tiny_federation, tmp_path):
    cfg = RunConfig.from_flwr(tiny_overrides(tiny_federation, tmp_path / "run"))
    spec = cfg.build_model(4).spec
    first = _job(cfg, spec, "run-a")
    assert first.saved is None
    _, _, local = first.train(1, 0.01, 2, 0.0, seed=0)
    assert load_optimizer_state(first.state_dir, "run-a")  # moments kept for this run
    again = _job(cfg, spec, "run-a")  # a restarted node of the same run: its statistics come back
    assert again.saved is not None and set(again.saved) == set(local)
    assert all(torch.equal(again.saved[k], local[k]) for k in local)
    fresh = _job(cfg, spec, "run-b")  # a fresh run in the same folder starts the site afresh
    assert fresh.saved is None
    assert load_optimizer_state(fresh.state_dir, "run-b") is None


def test_per_case_dice_is_kept_at_the_site(tiny_federation, tmp_path):
    import json

    cfg = RunConfig.from_flwr(tiny_overrides(tiny_federation, tmp_path / "run"))
    job = _job(cfg, cfg.build_model(4).spec, "run-a")
    metrics = job.evaluate(server_round=3)
    lines = [json.loads(x) for x in (job.state_dir / "cases.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in lines} == {"oracle", "gated"} and {r["round"] for r in lines} == {3}
    assert len(lines) == 2 * len(job.data.val) and all(r["run"] == "run-a" and "dice-wt" in r for r in lines)
    sent = json.dumps(metrics)  # what is sent: averages only, no case id
    assert not any(r["case"] in sent for r in lines) and all(isinstance(v, (int, float)) for v in metrics.values())

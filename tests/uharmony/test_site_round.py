"""The site's round: state kept at the site belongs to one run."""

import torch

from tests.conftest import tiny_overrides
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of
from uharmony.federation.site_round import SiteRound
from uharmony.federation.site_state import load_optimizer_state


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


def test_the_site_sets_its_own_privacy_floor(tiny_federation, tmp_path):
    """Issue 29, F14: ``min-report-cases`` was the coordinator's (run config) alone. A site's node config may
    raise it and the run cannot lower it: below the floor no Dice leaves, and no train loss either."""
    import pytest

    from uharmony import protocol as P

    cfg = RunConfig.from_flwr(tiny_overrides(tiny_federation, tmp_path / "run"))  # the run's floor: 1
    spec = cfg.build_model(4).spec

    def job(node_config):
        site = SiteRound(node_config, cfg, spec, "uharmony", run_id="r")
        model = cfg.build_model(4)
        site.load(global_state_of(model, ModelRoles(model, "uharmony")))
        return site

    floor = job({"partition-id": 0, "min-report-cases": 5})  # one validation case, two training cases
    assert floor.cfg.min_report_cases == 5 and len(floor.data.val) == 1
    assert not [k for k in floor.evaluate(1) if k.startswith(("dice", "hd95", "gate"))]
    _, metrics, _ = floor.train(1, 0.01, 1, 0.0, seed=0)
    assert P.TRAIN_LOSS not in metrics and metrics[P.NUM_EXAMPLES] == 2
    open_site = job({"partition-id": 0})  # without its own floor: the run's
    assert "dice-wt-oracle" in open_site.evaluate(1)
    assert P.TRAIN_LOSS in open_site.withhold({P.TRAIN_LOSS: 0.5})
    for bad in ("five", 0, True, 2.5):
        with pytest.raises(ValueError, match="node config: 'min-report-cases'"):
            job({"partition-id": 0, "min-report-cases": bad})


def test_a_site_trains_and_scores_the_type_head_from_its_cases_types(tiny_federation, tmp_path):
    """UMS-Rep's second task through the site's own round: each batch carries its cases' type index (the
    synthetic cases are typed in the manifest), the head's weights leave with the trained ones, and its accuracy
    leaves only at or above the site's floor."""
    from uharmony import protocol as P
    from uharmony.data.pipeline import BATCH_KEYS

    over = tiny_overrides(tiny_federation, tmp_path / "run", finetune="joint", tasks="presence,tumour-type")
    cfg = RunConfig.from_flwr(over)
    spec = cfg.build_model(4).spec
    job = _job(cfg, spec, "r")
    assert "tumour_type" in BATCH_KEYS and {it["tumour_type"] for it in job.data.train} == {0}  # site 1: glioma
    batch = next(job.data.batches(2, 1, seed=0))
    assert batch["tumour_type"].tolist() == [0, 0]
    head = job.model.tasks["tumour-type"].net[3].weight.detach().clone()
    sent, _, _ = job.train(1, 0.01, 2, 0.0, seed=0)
    assert any(k.startswith("tasks.tumour-type.") for k in sent)
    assert not torch.equal(job.model.tasks["tumour-type"].net[3].weight, head)  # it trained
    metrics = job.evaluate(1)
    assert metrics[P.TYPE_CASES] == len(job.data.val) and 0.0 <= metrics[P.TYPE_ACCURACY] <= 1.0
    floor = SiteRound({"partition-id": 0, "min-report-cases": 5}, cfg, spec, "uharmony", run_id="r")
    model = cfg.build_model(4)
    floor.load(global_state_of(model, ModelRoles(model, "uharmony")))
    assert P.TYPE_ACCURACY not in floor.evaluate(1)  # one validation scan, a floor of 5: no accuracy leaves

"""The site's side of a run's phase: a table of what a train and an evaluate message mean."""

import pytest

from uharmony.federation.config import RunConfig, accept_phase, forget_phase
from uharmony.federation.site_work import PLAN, SEGMENT, SITE_WORK, SiteWork, register_site_work, site_work


@pytest.mark.parametrize(
    "config, kind",
    [
        ({}, "segment"),
        ({"finetune": "joint"}, "plan"),
        ({"tasks": "presence"}, "plan"),
        ({"phase": "pretrain"}, "pretrain"),
    ],
)
def test_each_run_config_finds_its_site_work(config, kind):
    expected = {"segment": SEGMENT, "plan": PLAN}.get(kind) or SITE_WORK[kind]
    assert site_work(RunConfig.from_flwr(config)) is expected


def test_a_phase_without_its_own_site_work_does_segmentations_and_one_with_it_its_own():
    accept_phase("warm-up")
    try:
        cfg = RunConfig.from_flwr({"phase": "warm-up"})
        assert site_work(cfg) is SEGMENT  # a server phase that changes only whom it asks
        calls = []
        own = register_site_work("warm-up", SiteWork(lambda *a: calls.append(a), lambda *a: {}))
        assert site_work(cfg) is own
        site_work(cfg).train("job", 1, 0.1, 2, 0.0, 7)
        assert calls == [("job", 1, 0.1, 2, 0.0, 7)]
    finally:
        SITE_WORK.pop("warm-up", None)
        forget_phase("warm-up")


def test_registering_a_phases_site_work_lets_the_sites_run_config_name_it():
    try:
        register_site_work("solo", SiteWork(lambda *a: None, lambda *a: {}))
        assert RunConfig.from_flwr({"phase": "solo"}).phase == "solo"
    finally:
        SITE_WORK.pop("solo", None)
        forget_phase("solo")

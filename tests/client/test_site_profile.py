"""The profile a SuperNode answers the server's query with: names and counts only."""

import pytest

from client.site_profile import site_profile
from uharmony import protocol as P
from uharmony.config import RunConfig

GROWN = ("t1", "t1ce", "t2", "flair", "adc")
REGIONS4 = ("ET", "TC", "WT", "RC")


def test_simulated_site_is_not_ready_before_its_join_round(tiny_join_federation):
    cfg = RunConfig.from_flwr({"data-root": str(tiny_join_federation), "join-schedule": "4@3"})
    early = site_profile({"partition-id": 3}, cfg, 2)
    assert early[P.READY] is False and early[P.DOMAIN_ID] == 3
    assert early[P.MODALITIES] == ",".join(GROWN) and early[P.REGIONS] == ",".join(REGIONS4)
    assert site_profile({"partition-id": 3}, cfg, 3)[P.READY] is True
    assert site_profile({"partition-id": 0}, cfg, 1)[P.READY] is True
    with pytest.raises(ValueError, match="join-schedule"):
        RunConfig.from_flwr({"join-schedule": "4"})

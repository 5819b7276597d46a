"""The profile a joining SuperNode declares: accepted when well formed, else refused with the key named."""

import pytest

from server.admission import BadProfile, parse_profile
from uharmony import protocol as P

GOOD = {
    P.SITE_ID: "hospital-d",
    P.DOMAIN_ID: 3,
    P.MODALITIES: "t1,t1ce,t2,flair,adc",
    P.REGIONS: "ET,TC,WT,RC",
    P.TRAIN_CASES: 12,
    P.READY: True,
}


def test_a_good_profile_becomes_plain_python():
    assert parse_profile(GOOD) == {
        "site": "hospital-d",
        "domain": 3,
        "train_cases": 12,
        "ready": True,
        "modalities": ["t1", "t1ce", "t2", "flair", "adc"],
        "regions": ["ET", "TC", "WT", "RC"],
    }
    assert parse_profile({**GOOD, P.READY: False})["ready"] is False


@pytest.mark.parametrize(
    "change, key",
    [
        ({P.SITE_ID: ""}, P.SITE_ID),
        ({P.DOMAIN_ID: -1}, P.DOMAIN_ID),
        ({P.DOMAIN_ID: 10_000}, P.DOMAIN_ID),  # one site may not make the head grow without bound
        ({P.DOMAIN_ID: "3"}, P.DOMAIN_ID),
        ({P.TRAIN_CASES: -2}, P.TRAIN_CASES),
        ({P.MODALITIES: ""}, P.MODALITIES),
        ({P.MODALITIES: "t1,t1"}, P.MODALITIES),
        ({P.MODALITIES: "T1,../x"}, P.MODALITIES),
        ({P.MODALITIES: ",".join(f"m{i}" for i in range(40))}, P.MODALITIES),
        ({P.REGIONS: "ET,dice-wt"}, P.REGIONS),  # would break the metric keys
        ({P.REGIONS: None}, P.REGIONS),
    ],
)
def test_bad_profiles_are_refused_naming_the_key(change, key):
    with pytest.raises(BadProfile, match=key):
        parse_profile({**GOOD, **change})

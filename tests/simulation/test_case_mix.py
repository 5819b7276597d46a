"""S4: sites with a case mix of several tumour types, each case's type in the manifest (UMS-Rep's second task)."""

from collections import Counter

import pytest

from simulation.synth import generate_federation
from simulation.synth.generate import case_lesion
from simulation.synth.lesions import LESION_TYPES, TUMOUR_TYPE
from simulation.synth.scenarios import S4_SITES, SIZE_RATIOS, scenario_profiles
from uharmony.data import load_federation
from uharmony.federation.config import RunConfig
from uharmony.vocabulary import SCENARIOS, TUMOUR_TYPES


def test_every_archetype_has_a_type_of_the_vocabulary():
    assert set(TUMOUR_TYPE) == set(LESION_TYPES) and set(TUMOUR_TYPE.values()) == set(TUMOUR_TYPES)
    assert "S4" in SCENARIOS and RunConfig(synth_scenario="S4").synth_scenario == "S4"


def test_each_s4_site_draws_its_cases_from_its_own_mix():
    profiles = scenario_profiles("S4", seed=0, cases_per_site=8)
    assert [p.cases for p in profiles] == [max(3, round(r * 8)) for r in SIZE_RATIOS]
    for i, (profile, site) in enumerate(zip(profiles, S4_SITES)):
        drawn = Counter(case_lesion(profile, [0, i, c, 104729]) for c in range(2000))
        assert set(drawn) == set(site["mix"])
        for kind, share in site["mix"].items():
            assert drawn[kind] / 2000 == pytest.approx(share, abs=0.04), (profile.name, kind, drawn)
    for seed in range(50):  # and every site's own cases, as few as they are, follow its shares to within 2 cases
        for i, profile in enumerate(scenario_profiles("S4", seed=seed, cases_per_site=8)):
            drawn = Counter(case_lesion(profile, [seed, i, c, 104729]) for c in range(profile.cases))
            for kind, share in profile.lesion_mix.items():
                assert abs(drawn[kind] - share * profile.cases) <= 2, (seed, profile.name, drawn)
    # S1's scanners: the same acquisition drawn from the same seed, site by site
    s1 = scenario_profiles("S1", seed=0, cases_per_site=8)
    assert [(p.scale, p.noise, p.contrast) for p in profiles] == [(p.scale, p.noise, p.contrast) for p in s1]
    assert all(not p.lesion_mix for p in s1)  # the other scenarios' sites have one archetype each


def test_a_mixed_site_writes_each_cases_type_and_held_out_cases_change_no_other_type(tmp_path):
    profiles = scenario_profiles("S4", seed=2, cases_per_site=1)  # 3 cases per site
    fed = generate_federation(tmp_path / "a", seed=2, spacing=6.0, progress=False, profiles=profiles, workers=1)
    more = generate_federation(
        tmp_path / "b", seed=2, spacing=6.0, progress=False, profiles=profiles, workers=1, val_cases=2
    )
    assert fed["sites"].keys() == more["sites"].keys()
    a, b = load_federation(tmp_path / "a"), load_federation(tmp_path / "b")
    types_a = {c.case_id: c.tumour_type for s in a.sites for c in s.cases}
    types_b = {c.case_id: c.tumour_type for s in b.sites for c in s.cases}
    assert len(types_a) == 15 and all(types_b[k] == v for k, v in types_a.items())
    assert set(types_b.values()) <= set(TUMOUR_TYPES) and len(set(types_b.values())) >= 3
    for site in b.sites:  # every type a site's mix allows, none other
        allowed = {TUMOUR_TYPE[k] for k in S4_SITES[int(site.name) - 1]["mix"]}
        assert {c.tumour_type for c in site.cases} <= allowed


def test_a_site_with_one_archetype_types_every_case_as_it(tmp_path):
    profiles = scenario_profiles("S1", seed=0, cases_per_site=1)[:2]
    generate_federation(tmp_path, seed=0, spacing=6.0, progress=False, profiles=profiles, workers=1)
    sites = load_federation(tmp_path).sites
    assert [{c.tumour_type for c in s.cases} for s in sites] == [{"glioma"}, {"metastasis"}]

"""Data for a joining site: an extra modality (ADC), BraTS 2024 labels with the resection cavity, and
every site read in the grown model's channel order."""

import json

import numpy as np
import pytest
import torch

from simulation.synth import generate_federation
from simulation.synth.generate import protocol_labels
from simulation.synth.profiles import make_join_profile, make_site_profile
from tests.conftest import tiny_label, write_nifti
from uharmony.data import DataError, SiteData, load_federation, load_site_folder, read_case
from uharmony.data.regions import annotated_regions, labels_to_regions

GROWN = ("t1", "t1ce", "t2", "flair", "adc")
REGIONS4 = ("ET", "TC", "WT", "RC")


@pytest.fixture(scope="module")
def join_federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("join") / "fed"
    profiles = [make_site_profile(0, i) for i in range(3)] + [make_join_profile(0, 3)]
    generate_federation(root, 4, 2, seed=0, spacing=4.0, progress=False, profiles=profiles)
    return root


def test_the_joining_site_brings_adc_and_the_resection_cavity(join_federation):
    fed = load_federation(join_federation)
    new = fed.sites[3]
    assert new.modalities == GROWN and new.label_map == "brats2024" and new.region_names == REGIONS4
    assert [s.region_names for s in fed.sites[:3]] == [("ET", "TC", "WT")] * 3
    item = read_case(new.cases[0], GROWN)
    assert item["image"].shape[0] == 5 and item["present"].tolist() == [True] * 5
    assert set(torch.unique(item["label"]).tolist()) >= {0, 2, 4}  # SNFH and RC at least (BraTS 2024 codes)
    # an old site read in the grown layout: ADC absent and zero, RC not annotated
    old = SiteData(fed.sites[2], 4.0, 16, GROWN, REGIONS4)
    assert old.train[0]["present"].tolist() == [False, True, True, True, False]  # site 3 has no T1
    assert float(old.train[0]["image"][4].abs().max()) == 0.0
    assert old.train[0]["regions"].tolist() == [True, True, True, False]
    assert old.train[0]["label"].shape[0] == 4
    new_data = SiteData(new, 4.0, 16, GROWN, REGIONS4)
    assert new_data.train[0]["regions"].tolist() == [True] * 4 and float(new_data.train[0]["label"][3].sum()) > 0
    # before the model grows, the same site is read without what the model cannot use
    assert SiteData(new, 4.0, 16).train[0]["image"].shape[0] == 4


def test_generator_protocols_write_each_sites_label_habit():
    seg = np.array([0, 1, 2, 3, 4], np.uint8)  # generator codes: NCR, ED, RC, ET
    assert protocol_labels(seg, "brats2024").tolist() == [0, 1, 2, 4, 3]
    assert protocol_labels(seg, "wt").tolist() == [0, 2, 2, 0, 2]  # the cavity is not tumour
    with pytest.raises(ValueError, match="resection-cavity"):
        protocol_labels(seg, "full")


def test_region_order_follows_the_model():
    lab = torch.tensor([[[[0, 1, 2, 3, 4]]]])
    masks = labels_to_regions(lab, "brats2024", ("RC", "ET", "WT"))
    assert masks[:, 0, 0].tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0]]
    assert annotated_regions("brats2021", REGIONS4) == (True, True, True, False)
    with pytest.raises(ValueError, match="labelling protocol"):
        annotated_regions("brats1999")


def test_hospital_folder_with_an_extra_modality_and_brats2024_labels(tmp_path):
    site = tmp_path / "hospital-d"
    for case in ("C1", "C2"):
        for m in GROWN:
            write_nifti(site / case / f"{case}_{m}.nii.gz", np.random.rand(16, 16, 16).astype(np.float32))
        lab = tiny_label(values=(1, 2, 3))  # BraTS 2024: 1 NETC, 2 SNFH, 3 ET ...
        lab[0:2, 0:2, 0:2] = 4  # ... and 4 RC
        write_nifti(site / case / f"{case}_seg.nii.gz", lab)
    (site / "site.json").write_text(json.dumps({"modalities": list(GROWN), "labels": "brats2024"}))
    s = load_site_folder(site, "hospital-d", domain=3)
    assert s.modalities == GROWN and s.region_names == REGIONS4
    item = read_case(s.cases[0], GROWN)
    assert item["present"].tolist() == [True] * 5 and set(torch.unique(item["label"]).tolist()) == {0, 1, 2, 3, 4}
    (site / "site.json").write_text(json.dumps({"modalities": ["t1", "ADC!"]}))
    with pytest.raises(DataError, match="site.json"):
        load_site_folder(site, "hospital-d")
    (site / "site.json").write_text(json.dumps({"modalities": ["adc"], "labels": "brats1999"}))
    with pytest.raises(DataError, match="brats1999"):
        load_site_folder(site, "hospital-d")


def test_a_case_with_none_of_the_models_modalities_is_named(tmp_path):
    site = tmp_path / "s"
    write_nifti(site / "C1" / "C1_adc.nii.gz", np.random.rand(16, 16, 16).astype(np.float32))
    write_nifti(site / "C1" / "C1_seg.nii.gz", tiny_label())
    (site / "site.json").write_text(json.dumps({"modalities": ["adc"]}))
    case = load_site_folder(site, "s").cases[0]
    with pytest.raises(DataError, match="C1_adc.nii.gz.*none of the model's modalities"):
        read_case(case)  # the default four BraTS modalities

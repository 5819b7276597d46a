"""The profile a SuperNode answers the server's query with: names and counts only."""

import pytest

from client.site_profile import site_profile
from uharmony import protocol as P
from uharmony.federation.config import RunConfig

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


def test_a_label_free_hospital_folder_declares_no_regions(tmp_path):
    """``"labels": "none"`` in site.json: the folders hold scans only; the profile says counts only."""
    import json

    from tests.conftest import AFFINE, brain, write_nifti
    from uharmony.data import SiteData

    for case in ("c1", "c2", "c3"):
        for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
            write_nifti(tmp_path / "site" / case / f"{case}_{m}.nii.gz", brain(i), AFFINE)
    (tmp_path / "site" / "site.json").write_text(json.dumps({"labels": "none"}))
    node = {"data-path": str(tmp_path / "site"), "site-id": "h5", "state-dir": str(tmp_path / "state")}
    prof = site_profile(node, RunConfig.from_flwr({}), 1)
    assert prof[P.LABELLED] is False and prof[P.REGIONS] == "" and prof[P.TRAIN_CASES] == 2
    from uharmony.data import load_site_folder

    site = load_site_folder(tmp_path / "site", "h5")
    assert not site.labelled and all(c.label is None for c in site.cases)
    data = SiteData(site, 4.0, 8)
    item = data.train[0]
    assert not item["regions"].any() and float(item["label"].abs().sum()) == 0  # nothing to learn from
    assert next(data.scan_batches(1, 1, 0))["image"].shape[-3:] == (8, 8, 8)
    # a labelled site whose case lost its label file is a named, skipped case (not a crash)
    (tmp_path / "site" / "site.json").write_text(json.dumps({"labels": "full"}))
    labelled = load_site_folder(tmp_path / "site", "h5")
    labelled.cases[0].label = None
    labelled.train = labelled.cases[:1]
    data = SiteData(labelled, 4.0, 8)
    assert not data.train and "no label file" in data.skipped[0]["reason"]

"""The MONAI pipeline: preprocessing, random patches, and the on-disk cache of preprocessed cases."""

from pathlib import Path

import torch

from tests.conftest import AFFINE, brain, make_brats2021, write_nifti
from uharmony.data import SiteData, load_federation, load_site_folder


def test_synthetic_federation_and_pipeline(tiny_federation, tmp_path):
    fed = load_federation(tiny_federation)
    assert len(fed.sites) == 4
    wt_only = [s for s in fed.sites if s.label_map == "wt"]
    assert wt_only and wt_only[0].regions == (False, False, True)
    no_t1 = [s for s in fed.sites if "t1" not in s.modalities][0]
    data = SiteData(no_t1, spacing=6.0, patch=16, cache_dir=tmp_path)
    item = data.train[0]
    assert item["present"].tolist() == [False, True, True, True]
    assert float(item["image"][0].abs().max()) == 0.0
    brain = item["image"][1] != 0
    assert abs(float(item["image"][1][brain].mean())) < 1e-3  # z-scored on brain voxels
    assert item["spacing"].tolist() == [6.0, 6.0, 6.0] and int(item["domain"]) == no_t1.domain
    batches = list(data.batches(batch_size=2, steps=3, seed=0))
    assert len(batches) == 3
    assert batches[0]["image"].shape == (2, 4, 16, 16, 16) and batches[0]["label"].shape == (2, 3, 16, 16, 16)
    again = [b["image"] for b in SiteData(no_t1, 6.0, 16, cache_dir=tmp_path).batches(2, 3, seed=0)]
    assert all(torch.equal(a["image"], b) for a, b in zip(batches, again))  # same seed, same patches


def test_preprocessed_cases_are_reused_and_a_changed_file_is_read_again(tmp_path):
    site = load_site_folder(make_brats2021(tmp_path / "site", {"1": ["C1", "C2", "C3", "C4"]}), "hospital-a")
    cache = tmp_path / "cache"
    first = SiteData(site, 2.0, 16, cache_dir=cache)
    cached = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    assert len(cached) == len(site.cases)
    second = SiteData(site, 2.0, 16, cache_dir=cache)  # the next round's process at the site: read, not redone
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == cached
    torch.testing.assert_close(torch.as_tensor(second.val[0]["image"]), torch.as_tensor(first.val[0]["image"]))
    case = site.val[0]  # the hospital replaces a scan: the cached version of the old one must not be used
    write_nifti(Path(case.images["flair"]), brain(7) * 3.0 + 50.0, AFFINE)
    third = SiteData(site, 2.0, 16, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == len(site.cases) + 1
    assert not torch.equal(torch.as_tensor(third.val[0]["image"][3]), torch.as_tensor(first.val[0]["image"][3]))

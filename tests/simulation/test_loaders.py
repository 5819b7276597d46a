"""Public-dataset loaders on tiny trees with the real naming and partition formats."""

import json

import numpy as np
import pytest
import torch

from simulation.datasets import SiteData, load_federation
from simulation.datasets.federation import load_site_folder
from simulation.datasets.reading import read_case
from simulation.datasets.regions import labels_to_regions
from tests.conftest import tiny_label, write_nifti

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _brain(seed, shape=(16, 16, 16)):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[2:14, 2:14, 2:14] = rng.uniform(100, 200, (12, 12, 12))
    return img


def make_brats2021(root, subjects_by_partition, partition_csv="partitioning_1.csv"):
    rows = ["Partition_ID,Subject_ID"]
    for pid, subjects in subjects_by_partition.items():
        for s in subjects:
            for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
                write_nifti(root / s / f"{s}_{m}.nii.gz", _brain(i), AFFINE)
            write_nifti(root / s / f"{s}_seg.nii.gz", tiny_label(values=(1, 2, 4)), AFFINE)
            rows.append(f"{pid},{s}")
    (root / partition_csv).write_text("\n".join(rows) + "\n")
    return root


def test_brats2021_fets_partitions(tmp_path):
    make_brats2021(tmp_path, {"1": ["BraTS2021_00000", "BraTS2021_00002"], "2": ["BraTS2021_00003", "BraTS2021_00005", "BraTS2021_00006"]})
    fed = load_federation(tmp_path, "brats2021")
    assert [s.name for s in fed.sites] == ["1", "2"]
    assert [len(s.cases) for s in fed.sites] == [2, 3]
    assert all(len(s.train) + len(s.val) == len(s.cases) and s.val for s in fed.sites)
    assert len(fed.pooled().train) == sum(len(s.train) for s in fed.sites)
    item = read_case(fed.sites[0].cases[0])
    assert item["image"].shape == (4, 16, 16, 16) and bool(item["present"].all())
    # the second partitioning file works the same way
    (tmp_path / "partitioning_2.csv").write_text("Partition_ID,Subject_ID\n7,BraTS2021_00000\n")
    assert [s.name for s in load_federation(tmp_path, "brats2021", "partitioning_2.csv").sites] == ["7"]


def test_brats2023_subchallenges_are_domains(tmp_path):
    for ch, n in (("GLI", 2), ("MET", 1), ("PED", 1)):
        for i in range(n):
            case = f"BraTS-{ch}-{i:05d}-000"
            folder = tmp_path / f"ASNR-MICCAI-BraTS2023-{ch}-Challenge-TrainingData" / case
            for j, suffix in enumerate(("t1n", "t1c", "t2w", "t2f")):
                write_nifti(folder / f"{case}-{suffix}.nii.gz", _brain(j), AFFINE)
            write_nifti(folder / f"{case}-seg.nii.gz", tiny_label(values=(1, 2, 3)), AFFINE)
    fed = load_federation(tmp_path, "brats2023")
    assert [(s.name, s.domain, len(s.cases)) for s in fed.sites] == [("GLI", 0, 2), ("MET", 1, 1), ("PED", 2, 1)]
    item = read_case(fed.sites[0].cases[0])
    regions = labels_to_regions(item["label"], "brats2023")
    lab = tiny_label(values=(1, 2, 3))
    assert torch.equal(regions[0].bool(), torch.as_tensor(lab == 3))
    assert torch.equal(regions[1].bool(), torch.as_tensor((lab == 1) | (lab == 3)))
    assert torch.equal(regions[2].bool(), torch.as_tensor(lab > 0))


def test_msd_task01_4d_images(tmp_path):
    entries = []
    for i in range(2):
        img = np.stack([_brain(c) * (c + 1) for c in range(4)], axis=-1)  # FLAIR, T1w, t1gd, T2w
        write_nifti(tmp_path / "imagesTr" / f"BRATS_{i:03d}.nii.gz", img, AFFINE)
        write_nifti(tmp_path / "labelsTr" / f"BRATS_{i:03d}.nii.gz", tiny_label(values=(2, 1, 3)), AFFINE)
        entries.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "BRATS", "training": entries}))
    fed = load_federation(tmp_path, "msd")
    assert len(fed.sites) == 1 and len(fed.sites[0].cases) == 2
    item = read_case(fed.sites[0].cases[0])
    # canonical channel order t1, t1ce, t2, flair  <-  MSD order flair(x1), t1(x2), t1gd(x3), t2(x4)
    means = [float(item["image"][c][item["image"][c] > 0].mean() / item["image"][3][item["image"][3] > 0].mean()) for c in range(4)]
    assert np.allclose(means, [2 * np.mean(_brain(1)[_brain(1) > 0]) / np.mean(_brain(0)[_brain(0) > 0]),
                               3 * np.mean(_brain(2)[_brain(2) > 0]) / np.mean(_brain(0)[_brain(0) > 0]),
                               4 * np.mean(_brain(3)[_brain(3) > 0]) / np.mean(_brain(0)[_brain(0) > 0]), 1.0], rtol=1e-4)
    regions = labels_to_regions(item["label"], "msd")
    lab = tiny_label(values=(2, 1, 3))
    assert torch.equal(regions[1].bool(), torch.as_tensor((lab == 2) | (lab == 3)))  # TC = non-enhancing + enhancing


def test_synthetic_federation_and_pipeline(tiny_federation):
    fed = load_federation(tiny_federation, "synthetic")
    assert len(fed.sites) == 4
    wt_only = [s for s in fed.sites if s.label_map == "wt"]
    assert wt_only and wt_only[0].regions == (False, False, True)
    no_t1 = [s for s in fed.sites if "t1" not in s.modalities][0]
    data = SiteData(no_t1, spacing=6.0, patch=16)
    item = data.train[0]
    assert item["present"].tolist() == [False, True, True, True]
    assert float(item["image"][0].abs().max()) == 0.0
    brain = item["image"][1] != 0
    assert abs(float(item["image"][1][brain].mean())) < 1e-3  # z-scored on brain voxels
    batches = list(data.batches(batch_size=2, steps=3, seed=0))
    assert len(batches) == 3
    assert batches[0]["image"].shape == (2, 4, 16, 16, 16) and batches[0]["label"].shape == (2, 3, 16, 16, 16)


def test_site_folder_for_deployment(tmp_path):
    make_brats2021(tmp_path, {"1": ["CASE_A", "CASE_B", "CASE_C"]})
    (tmp_path / "site.json").write_text(json.dumps({"modalities": ["t1ce", "t2", "flair"], "labels": "full"}))
    site = load_site_folder(tmp_path, "hospital-a", domain=2)
    assert site.name == "hospital-a" and site.domain == 2 and len(site.cases) == 3
    assert site.modalities == ("t1ce", "t2", "flair")
    with pytest.raises(ValueError, match="site-id"):
        load_site_folder(tmp_path, "")

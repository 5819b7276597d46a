"""Partitioning public datasets by institution, on tiny trees with the real naming and partition formats."""

import json

import numpy as np
import pytest
import torch

from simulation.partition import partition
from simulation.synth.cli import main as data_cli
from tests.conftest import AFFINE, brain, make_brats2021, tiny_label, write_nifti
from uharmony.data import DataError, load_federation, read_case
from uharmony.data.regions import labels_to_regions


def test_brats2021_fets_partitions(tmp_path):
    data = make_brats2021(
        tmp_path / "data",
        {"1": ["BraTS2021_00000", "BraTS2021_00002"], "2": ["BraTS2021_00003", "BraTS2021_00005", "BraTS2021_00006"]},
    )
    fed = load_federation(partition("brats2021", data, tmp_path / "fed").parent)
    assert [s.name for s in fed.sites] == ["1", "2"] and [s.domain for s in fed.sites] == [0, 1]
    assert [len(s.cases) for s in fed.sites] == [2, 3]
    assert all(len(s.train) + len(s.val) == len(s.cases) and s.val for s in fed.sites)
    assert len(fed.pooled().train) == sum(len(s.train) for s in fed.sites)
    item = read_case(fed.sites[0].cases[0])
    assert item["image"].shape == (4, 16, 16, 16) and bool(item["present"].all())
    # the second partitioning file works the same way, through the command
    (data / "partitioning_2.csv").write_text("Partition_ID,Subject_ID\n7,BraTS2021_00000\n")
    assert (
        data_cli(
            [
                "partition",
                "brats2021",
                "--root",
                str(data),
                "--csv",
                "partitioning_2.csv",
                "--out",
                str(tmp_path / "fed2"),
            ]
        )
        == 0
    )
    assert [s.name for s in load_federation(tmp_path / "fed2").sites] == ["7"]


def test_brats2023_subchallenges_are_domains(tmp_path):
    for ch, n in (("GLI", 2), ("MET", 1), ("PED", 1)):
        for i in range(n):
            case = f"BraTS-{ch}-{i:05d}-000"
            folder = tmp_path / "data" / f"ASNR-MICCAI-BraTS2023-{ch}-Challenge-TrainingData" / case
            for j, suffix in enumerate(("t1n", "t1c", "t2w", "t2f")):
                write_nifti(folder / f"{case}-{suffix}.nii.gz", brain(j), AFFINE)
            write_nifti(folder / f"{case}-seg.nii.gz", tiny_label(values=(1, 2, 3)), AFFINE)
    fed = load_federation(partition("brats2023", tmp_path / "data", tmp_path / "fed").parent)
    assert [(s.name, s.domain, len(s.cases)) for s in fed.sites] == [("GLI", 0, 2), ("MET", 1, 1), ("PED", 2, 1)]
    item = read_case(fed.sites[0].cases[0])
    regions = labels_to_regions(item["label"], "brats2023")
    lab = tiny_label(values=(1, 2, 3))
    assert torch.equal(regions[0].bool(), torch.as_tensor(lab == 3))
    assert torch.equal(regions[1].bool(), torch.as_tensor((lab == 1) | (lab == 3)))
    assert torch.equal(regions[2].bool(), torch.as_tensor(lab > 0))


def test_msd_task01_4d_images(tmp_path):
    entries = []
    root = tmp_path / "Task01"
    for i in range(2):
        img = np.stack([brain(c) * (c + 1) for c in range(4)], axis=-1)  # FLAIR, T1w, t1gd, T2w
        write_nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", img, AFFINE)
        write_nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", tiny_label(values=(2, 1, 3)), AFFINE)
        entries.append({"image": f"./imagesTr/BRATS_{i:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "BRATS", "training": entries}))
    fed = load_federation(partition("msd", root, tmp_path / "fed").parent)
    assert len(fed.sites) == 1 and len(fed.sites[0].cases) == 2
    item = read_case(fed.sites[0].cases[0])
    # canonical channel order t1, t1ce, t2, flair  <-  MSD order flair(x1), t1(x2), t1gd(x3), t2(x4)
    img = item["image"]
    means = [float(img[c][img[c] > 0].mean() / img[3][img[3] > 0].mean()) for c in range(4)]
    b = [np.mean(brain(c)[brain(c) > 0]) for c in range(4)]
    assert np.allclose(means, [2 * b[1] / b[0], 3 * b[2] / b[0], 4 * b[3] / b[0], 1.0], rtol=1e-4)
    regions = labels_to_regions(item["label"], "msd")
    lab = tiny_label(values=(2, 1, 3))
    assert torch.equal(regions[1].bool(), torch.as_tensor((lab == 2) | (lab == 3)))  # TC = non-enhancing + enhancing


def test_a_subject_the_csv_names_but_the_tree_lacks(tmp_path):
    data = make_brats2021(tmp_path / "data", {"1": ["BraTS2021_00000", "BraTS2021_00001"]})
    csv = data / "partitioning_1.csv"
    csv.write_text(csv.read_text() + "1,BraTS2021_99999\n")
    with pytest.raises(DataError, match="BraTS2021_99999") as info:
        partition("brats2021", data, tmp_path / "strict", strict=True)
    assert "partitioning_1.csv" in str(info.value)
    site = load_federation(partition("brats2021", data, tmp_path / "fed").parent).sites[0]  # skipped, recorded
    assert [s["case"] for s in site.skipped] == ["BraTS2021_99999"] and len(site.cases) == 2


def test_bad_partition_csv_and_roots(tmp_path):
    data = make_brats2021(tmp_path / "data", {"1": ["BraTS2021_00000"]})
    (data / "partitioning_1.csv").write_text("Site,Case\n1,x\n")
    with pytest.raises(DataError, match="Partition_ID"):
        partition("brats2021", data, tmp_path / "fed")
    with pytest.raises(DataError, match="does not exist"):
        partition("brats2021", tmp_path / "nope", tmp_path / "fed")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        partition("brats2030", data, tmp_path / "fed")
    with pytest.raises(DataError, match="dataset.json"):
        partition("msd", data, tmp_path / "fed")
    assert data_cli(["partition", "msd", "--root", str(data), "--out", str(tmp_path / "fed")]) == 2

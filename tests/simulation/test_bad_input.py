"""Every bad-input case gives an error naming the file; in federation mode the case is skipped and counted."""

import numpy as np
import pytest

from simulation.datasets import DataError, SiteData, load_federation
from simulation.datasets.reading import read_case
from tests.conftest import tiny_label, write_nifti
from tests.simulation.test_loaders import AFFINE, make_brats2021

GOOD = "BraTS2021_00000"
BAD = "BraTS2021_00001"


@pytest.fixture
def tree(tmp_path):
    make_brats2021(tmp_path, {"1": [GOOD, BAD, "BraTS2021_00002", "BraTS2021_00003"]})
    return tmp_path


def _break(root, kind):
    folder = root / BAD
    if kind == "missing-modality":
        (folder / f"{BAD}_t1ce.nii.gz").unlink()
        return f"{BAD}_t1ce.nii.gz", "missing modality"
    if kind == "shape":
        write_nifti(folder / f"{BAD}_t2.nii.gz", np.ones((16, 16, 12), np.float32), AFFINE)
        return f"{BAD}_t2.nii.gz", "shape"
    if kind == "affine":
        write_nifti(folder / f"{BAD}_flair.nii.gz", np.ones((16, 16, 16), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
        return f"{BAD}_flair.nii.gz", "affine"
    if kind == "labels":
        write_nifti(folder / f"{BAD}_seg.nii.gz", tiny_label(values=(1, 2, 3)), AFFINE)
        return f"{BAD}_seg.nii.gz", "label values"
    if kind == "nan":
        img = np.ones((16, 16, 16), np.float32)
        img[3, 3, 3] = np.nan
        write_nifti(folder / f"{BAD}_t1.nii.gz", img, AFFINE)
        return f"{BAD}_t1.nii.gz", "NaN"
    if kind == "empty":
        (folder / f"{BAD}_t1.nii.gz").write_bytes(b"")
        return f"{BAD}_t1.nii.gz", "empty file"
    if kind == "unreadable":
        (folder / f"{BAD}_t2.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
        return f"{BAD}_t2.nii.gz", "unreadable"
    raise AssertionError(kind)


KINDS = ["missing-modality", "shape", "affine", "labels", "nan", "empty", "unreadable"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_case_error_names_the_file(tree, kind):
    filename, words = _break(tree, kind)
    fed = load_federation(tree, "brats2021")
    case = next(c for c in fed.sites[0].cases if c.case_id == BAD)
    with pytest.raises(DataError, match=words) as info:
        read_case(case)
    assert filename in str(info.value)


@pytest.mark.parametrize("kind", ["missing-modality", "nan", "unreadable"])
def test_bad_case_is_skipped_counted_and_reported(tree, kind):
    filename, _ = _break(tree, kind)
    fed = load_federation(tree, "brats2021", val_fraction=0.25)
    data = SiteData(fed.sites[0], spacing=2.0, patch=16)
    assert len(data.skipped) == 1
    assert data.skipped[0]["case"] == BAD and filename in data.skipped[0]["file"]
    assert len(data.train) + len(data.val) == 3  # the others are still there
    assert next(iter(data.batches(1, 1, 0)))["image"].shape[1] == 4


def test_csv_naming_unknown_subject(tree):
    csv = tree / "partitioning_1.csv"
    csv.write_text(csv.read_text() + "1,BraTS2021_99999\n")
    with pytest.raises(DataError, match="BraTS2021_99999") as info:
        load_federation(tree, "brats2021", strict=True)
    assert "partitioning_1.csv" in str(info.value)
    fed = load_federation(tree, "brats2021")  # federation mode: skipped, counted, reported
    assert [s["case"] for s in fed.sites[0].skipped] == ["BraTS2021_99999"]
    assert len(fed.sites[0].cases) == 4
    assert len(SiteData(fed.sites[0], spacing=2.0, patch=16).skipped) == 1


def test_bad_partition_csv_and_roots(tmp_path, tree):
    (tree / "partitioning_1.csv").write_text("Site,Case\n1,x\n")
    with pytest.raises(DataError, match="Partition_ID"):
        load_federation(tree, "brats2021")
    with pytest.raises(DataError, match="does not exist"):
        load_federation(tmp_path / "nope", "brats2021")
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_federation(tree, "brats2030")
    with pytest.raises(DataError, match="dataset.json"):
        load_federation(tree, "msd")

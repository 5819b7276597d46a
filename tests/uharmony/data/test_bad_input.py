"""Every bad-input case gives an error naming the file; at a site the case is skipped and counted."""

import numpy as np
import pytest

from tests.conftest import AFFINE, make_brats2021, tiny_label, write_nifti
from uharmony.data import DataError, SiteData, load_site_folder, read_case

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
    site = load_site_folder(tree, "hospital-a")
    case = next(c for c in site.cases if c.case_id == BAD)
    with pytest.raises(DataError, match=words) as info:
        read_case(case)
    assert filename in str(info.value)


@pytest.mark.parametrize("kind", ["missing-modality", "nan", "unreadable"])
def test_bad_case_is_skipped_counted_and_reported(tree, tmp_path_factory, kind):
    filename, _ = _break(tree, kind)
    site = load_site_folder(tree, "hospital-a")
    data = SiteData(site, spacing=2.0, patch=16, cache_dir=tmp_path_factory.mktemp("cache"))
    assert len(data.skipped) == 1
    assert data.skipped[0]["case"] == BAD and filename in data.skipped[0]["file"]
    assert len(data.train) + len(data.val) == 3  # the others are still there
    assert next(iter(data.batches(1, 1, 0)))["image"].shape[1] == 4

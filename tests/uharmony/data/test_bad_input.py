"""Every bad-input case gives an error naming the file; at a site the case is skipped and counted."""

import numpy as np
import pytest

from tests.conftest import AFFINE, brain, make_brats2021, tiny_label, write_nifti
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
        write_nifti(folder / f"{BAD}_t2.nii.gz", brain(2)[:, :, :12], AFFINE)
        return f"{BAD}_t2.nii.gz", "shape"
    if kind == "affine":
        write_nifti(folder / f"{BAD}_flair.nii.gz", brain(3), np.diag([1.0, 1.0, 1.0, 1.0]))
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


def _header_only(path, shape, zooms=(1.0, 1.0, 1.0), dtype=np.float32):
    """A file that is a NIfTI header declaring ``shape`` and nothing else (a few hundred bytes)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["pixdim"][1:4] = zooms  # written as is (a zero voxel size included)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.binaryblock)
        f.write(b"\0" * 4)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: write_nifti(p, np.zeros((16, 16, 16), np.float32), AFFINE), "constant"),
        (lambda p: write_nifti(p, np.full((16, 16, 16), 7.0, np.float32), AFFINE), "constant"),
        (lambda p: _header_only(p, (1000, 1000, 1000)), "1,000,000,000 voxels"),
        (lambda p: _header_only(p, (16, 16, 16), zooms=(0.0, 1.0, 1.0)), "voxel size"),
        (lambda p: _header_only(p, (16, 16, 16)), "truncated"),
    ],
)
def test_scans_refused_before_or_right_after_reading(tree, make, words):
    target = tree / BAD / f"{BAD}_t1.nii"  # uncompressed, so a header-only file is seen as truncated
    (tree / BAD / f"{BAD}_t1.nii.gz").unlink()
    make(target)
    case = next(c for c in load_site_folder(tree, "hospital-a").cases if c.case_id == BAD)
    case.images["t1"] = str(target)
    with pytest.raises(DataError, match=words) as info:
        read_case(case)
    assert target.name in str(info.value)

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


def _crafted(path, data, zooms=(1.0, 1.0, 1.0), srow=None, level=6):
    """A .nii.gz written byte by byte (the red-team's appendix G): the header's pixdim as given and, with
    ``srow``, an sform that says whatever it says, whatever pixdim says."""
    import gzip
    import struct

    import nibabel as nib

    img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    img.header.set_slope_inter(1.0, 0.0)
    img.update_header()
    img.header["vox_offset"] = 352
    raw = bytearray(img.header.binaryblock) + b"\0" * 4 + data.tobytes(order="F")
    if srow is not None:
        struct.pack_into("<h", raw, 252, 0)  # qform_code 0
        struct.pack_into("<h", raw, 254, 1)  # sform_code 1
        for i, off in enumerate((280, 296, 312)):
            struct.pack_into("<4f", raw, off, *map(float, srow[i]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw), level))
    return path


def _zeros_gz(path, shape, dtype):
    """A .nii.gz of zeros whose voxels are streamed into the gzip (the test holds no big array)."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    chunk, left = bytes(1 << 22), int(np.prod(shape)) * np.dtype(dtype).itemsize
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.binaryblock + b"\0" * 4)
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def _noise(shape=(8, 8, 8), dtype=np.float32):
    return (np.random.RandomState(0).rand(*shape) * 100).astype(dtype)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: _crafted(p, _noise(), zooms=(100.0,) * 3), "voxel size"),  # 1.9 KB -> (4, 234, 234, 234)
        (lambda p: _crafted(p, _noise(), zooms=(300.0,) * 3), "voxel size"),  # -> an 8 GB allocation
        (lambda p: _crafted(p, _noise(), zooms=(0.01,) * 3), "voxel size"),
        (lambda p: _crafted(p, _noise(), srow=[[0, 0, 0, 0]] * 3), "singular"),
        (lambda p: _crafted(p, _noise(), srow=[[float("nan"), 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "NaN or Inf"),
        (lambda p: _crafted(p, _noise(), srow=[[5, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "differs from the header"),
        # a gzip of ~0.3 MB that decompresses to 320 MiB of float64 (the red-team's 512x512x256 peaked at 3.6 GB)
        (lambda p: _zeros_gz(p, (512, 512, 160), np.float64), "not decompressed"),
    ],
)
def test_huge_voxels_are_refused_from_the_header(tree, make, words):
    """F12: files that passed the header checks and then resampled to gigabytes, broke a transform, or
    decompressed to gigabytes are refused from their header, naming the file, before any voxel is read."""
    target = tree / BAD / f"{BAD}_t1.nii.gz"
    make(target)
    case = next(c for c in load_site_folder(tree, "hospital-a").cases if c.case_id == BAD)
    with pytest.raises(DataError, match=words) as info:
        read_case(case)
    assert target.name in str(info.value)


def test_a_volume_that_would_resample_too_large_is_refused_from_the_header(tree):
    """F12: 10 mm voxels are plausible, but 64^3 of them on a 0.5 mm grid are 1280^3 voxels: refused where
    the spacing is known, before reading."""
    target = _crafted(tree / BAD / f"{BAD}_t1.nii.gz", _noise((64, 64, 64)), zooms=(10.0,) * 3)
    case = next(c for c in load_site_folder(tree, "hospital-a").cases if c.case_id == BAD)
    with pytest.raises(DataError, match="resample to about") as info:
        read_case(case, spacing=0.5)
    assert target.name in str(info.value)
    read_case(next(c for c in load_site_folder(tree, "hospital-a").cases if c.case_id == GOOD), spacing=0.5)


def test_a_singular_affine_skips_the_case_not_the_site(tree, tmp_path_factory):
    """F12: a zero sform used to raise inside MONAI's Orientationd and fail the site's round, every round."""
    for m in ("t1", "t1ce", "t2", "flair"):
        _crafted(tree / BAD / f"{BAD}_{m}.nii.gz", _noise((16, 16, 16)), zooms=(2.0,) * 3, srow=[[0, 0, 0, 0]] * 3)
    data = SiteData(load_site_folder(tree, "hospital-a"), spacing=6.0, patch=16, cache_dir=tmp_path_factory.mktemp("c"))
    assert [s["case"] for s in data.skipped] == [BAD] and "singular" in data.skipped[0]["reason"]
    assert data.skipped[0]["category"] == "bad-affine"
    assert len(data.train) + len(data.val) == 3


def test_any_error_in_a_case_transform_skips_the_case_with_its_type(tree, tmp_path_factory, monkeypatch):
    """F12: an error no check foresaw (here a ZeroDivisionError in a transform) costs the case, not the site;
    its type stays in the reason."""
    from uharmony.data import pipeline

    real = pipeline.CaseMeta.__call__

    def flaky(self, data):
        if data["case_id"] == BAD:
            raise ZeroDivisionError("a transform's own bug")
        return real(self, data)

    monkeypatch.setattr(pipeline.CaseMeta, "__call__", flaky)
    data = SiteData(load_site_folder(tree, "hospital-a"), spacing=6.0, patch=16, cache_dir=tmp_path_factory.mktemp("c"))
    assert [s["case"] for s in data.skipped] == [BAD]
    assert data.skipped[0]["reason"].startswith("ZeroDivisionError") and data.skipped[0]["category"].endswith(
        "ZeroDivisionError"
    )
    assert len(data.train) + len(data.val) == 3

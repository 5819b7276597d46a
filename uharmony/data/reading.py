"""Read and validate one case: every problem becomes a DataError that names the file."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from nibabel.openers import ImageOpener

from uharmony.data.cases import MODALITIES, Case, DataError
from uharmony.data.regions import LABEL_MAPS

_LOADER = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=False, dtype=np.float32)
MAX_VOXELS = 512**3  # per volume (a 4-D file: all its channels); a brain MRI at 0.5 mm is about 400^3
MAX_CHANNELS = 16
VOXEL_MM = (0.05, 20.0)  # a voxel edge outside this is no brain MRI (and 100 mm voxels resample to 1 GB)
MAX_RESAMPLED_VOXELS = 320**3  # one volume on the model's grid: a 32 cm cube at 1 mm
MAX_GZ_BYTES = 256 * 2**20  # what a .nii.gz may decompress to (a 2 MB gzip can declare 3.6 GB)


def check_header(path: str, spacing: float | None = None) -> None:
    """Refuse a file from its header alone, before any voxel is read or decompressed: a shape too large (a
    tiny file can declare a huge volume), a voxel size that is zero, negative, not finite or outside
    ``VOXEL_MM``, an affine that is not finite, singular or disagrees with the voxel size, a gzip that would
    decompress to more than ``MAX_GZ_BYTES``, a truncated file; with ``spacing`` (the model's grid, mm) a
    volume that would resample to more than ``MAX_RESAMPLED_VOXELS``."""
    try:
        header = nib.load(path).header  # reads the header only
        with ImageOpener(path) as f:  # as written: nibabel's load silently turns a zero voxel size into 1 mm
            raw = type(header).from_fileobj(f, check=False)
        shape, zooms = tuple(int(s) for s in header.get_data_shape()), raw.get_zooms()
        itemsize = header.get_data_dtype().itemsize
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt headers
        raise DataError(path, f"unreadable image header ({type(exc).__name__}: {exc})") from None
    if len(shape) not in (3, 4) or min(shape) < 1 or (len(shape) == 4 and shape[3] > MAX_CHANNELS):
        raise DataError(
            path, f"expected a 3-D image (or 4-D with at most {MAX_CHANNELS} channels), header says {shape}"
        )
    if math.prod(shape) > MAX_VOXELS:
        raise DataError(path, f"header declares {math.prod(shape):,} voxels (more than {MAX_VOXELS:,}); not read")
    voxel = tuple(float(z) for z in zooms[:3])
    if not all(math.isfinite(z) and z > 0 for z in voxel):
        raise DataError(path, f"voxel size {voxel} mm must be positive and finite")
    if not all(VOXEL_MM[0] <= z <= VOXEL_MM[1] for z in voxel):
        raise DataError(path, f"voxel size {voxel} mm outside [{VOXEL_MM[0]}, {VOXEL_MM[1]}] mm: not a brain MRI")
    _check_affine(path, raw, voxel)
    decoded = math.prod(shape) * itemsize
    if str(path).endswith(".gz"):
        if decoded > MAX_GZ_BYTES:
            raise DataError(
                path, f"header declares {decoded:,} bytes of voxels (more than {MAX_GZ_BYTES:,}); not decompressed"
            )
    else:
        needed = int(header.get("vox_offset", 0)) + decoded
        if os.path.getsize(path) < needed:
            raise DataError(path, f"file is truncated ({os.path.getsize(path)} bytes, header needs {needed})")
    if spacing is not None:
        resampled = math.prod(s * z / float(spacing) for s, z in zip(shape[:3], voxel))
        if resampled > MAX_RESAMPLED_VOXELS:
            raise DataError(
                path,
                f"{shape[:3]} voxels of {voxel} mm resample to about {resampled:,.0f} voxels at {spacing} mm "
                f"(more than {MAX_RESAMPLED_VOXELS:,}); not read",
            )


def _check_affine(path: str, raw, voxel: tuple) -> None:
    """The affine a reader will use (sform, else qform, else the voxel size), as written: finite, not
    singular, and with the voxel size of the header on its axes (within 1 %)."""
    try:
        affine = np.asarray(raw.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a corrupt quaternion or sform
        raise DataError(path, f"unreadable affine ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(affine).all():
        raise DataError(path, "the affine (sform/qform) holds NaN or Inf")
    axes = np.linalg.norm(affine[:3, :3], axis=0)
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-6 * math.prod(voxel):
        raise DataError(path, "the affine (sform/qform) is singular: no voxel-to-world mapping")
    if not np.allclose(axes, voxel, rtol=1e-2, atol=1e-3):
        raise DataError(
            path,
            f"the affine's voxel size {tuple(round(float(a), 4) for a in axes)} mm differs from the header's "
            f"{voxel} mm",
        )


def _load(path: str, image: bool = True, spacing: float | None = None) -> MetaTensor:
    if not path or not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "empty file")
    check_header(path, spacing)
    try:
        img = _LOADER(path)
    except Exception as exc:  # nibabel/MONAI raise many types for corrupt files
        raise DataError(path, f"unreadable image ({type(exc).__name__}: {exc})") from exc
    if not torch.isfinite(img).all():
        raise DataError(path, "contains NaN or Inf voxels")
    if image and float(img.max()) == float(img.min()):
        raise DataError(path, f"the image is constant ({float(img.min()):g} everywhere): no signal")
    return img


def _same_grid(ref: MetaTensor, ref_path: str, img: MetaTensor, path: str) -> None:
    if tuple(img.shape[-3:]) != tuple(ref.shape[-3:]):
        raise DataError(path, f"shape {tuple(img.shape)} differs from {tuple(ref.shape)} of {ref_path}")
    if not np.allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-3):
        raise DataError(path, f"affine differs from that of {ref_path}")


def read_case(case: Case, modalities: Sequence[str] = MODALITIES, spacing: float | None = None) -> dict:
    """Load a case as ``{"image": (M, X, Y, Z) MetaTensor, "present": (M,) bool, "label": (1, ...)}``.

    Channels follow ``modalities`` (the model's input order). ``spacing``: the grid (mm) the case will be
    resampled to; a file that would resample to too many voxels is refused from its header. Modalities the
    case does not have are zero-filled with ``present`` False; modalities the case has but the model does not
    know are not read. A modality the case is expected to have but whose file is missing is an error (the
    case is skipped in federation mode).
    """
    modalities = tuple(modalities)
    if not modalities:
        raise ValueError("read_case: no modality requested")
    channels: dict[str, MetaTensor] = {}
    ref = ref_path = None
    if case.image4d is not None:
        img4 = _load(case.image4d, spacing=spacing)
        if img4.dim() != 4 or img4.shape[-1] != len(case.channels):
            raise DataError(
                case.image4d,
                f"expected a 4-D image with {len(case.channels)} channels "
                f"({', '.join(case.channels)}), got {tuple(img4.shape)}",
            )
        ref, ref_path = img4[..., 0], case.image4d
        for i, m in enumerate(case.channels):
            if m in modalities:
                channels[m] = img4[..., i]
    else:
        wanted = [m for m in case.modalities if m in modalities]
        if case.modalities and not wanted:
            raise DataError(
                case.images.get(case.modalities[0], case.case_id),
                f"case {case.case_id} has none of the model's modalities {list(modalities)} "
                f"(it has {list(case.modalities)})",
            )
        for m in wanted:
            path = case.images[m]
            if not os.path.exists(path):
                raise DataError(path, f"missing modality file ({m}) of case {case.case_id}")
            img = _load(path, spacing=spacing)
            if img.dim() != 3:
                raise DataError(path, f"expected a 3-D image, got shape {tuple(img.shape)}")
            if ref is None:
                ref, ref_path = img, path
            else:
                _same_grid(ref, ref_path, img, path)
            channels[m] = img
    if ref is None:
        raise DataError(case.case_id, "case has no modality")
    zeros = torch.zeros(ref.shape[-3:], dtype=torch.float32)
    image = torch.stack([channels[m].as_tensor() if m in channels else zeros for m in modalities])
    out = {
        "case_id": case.case_id,
        "image": MetaTensor(image, affine=ref.affine),
        "present": torch.tensor([m in channels for m in modalities]),
        "protocol": case.label_map,
    }
    if case.label is not None:
        lab = _load(case.label, image=False, spacing=spacing)
        if lab.dim() != 3:
            raise DataError(case.label, f"expected a 3-D label map, got shape {tuple(lab.shape)}")
        _same_grid(ref, ref_path, lab, case.label)
        allowed = LABEL_MAPS[case.label_map]["values"]
        values = torch.unique(lab)
        bad = sorted({float(v) for v in values.tolist()} - {float(a) for a in allowed})
        if bad:
            raise DataError(case.label, f"label values {bad} outside the dataset's set {list(allowed)}")
        out["label"] = MetaTensor(lab.as_tensor().unsqueeze(0), affine=ref.affine)
    if case.reference:  # a noise-free or high-SNR copy: where a modality has none, the scan itself stands in
        refs = {}
        for m, path in case.reference.items():
            if m not in channels:
                continue
            try:  # a scoring aid only: a bad reference costs its scores, never the case
                if not os.path.exists(path):
                    raise DataError(path, f"missing reference file ({m}) of case {case.case_id}")
                img = _load(path, spacing=spacing)
                _same_grid(ref, ref_path, img, path)
            except DataError as exc:
                logging.getLogger(__name__).warning("case %s: reference %s not used: %s", case.case_id, m, exc)
                continue
            refs[m] = img.as_tensor()
        stack = [refs.get(m, image[i]) for i, m in enumerate(modalities)]
        out["reference"] = MetaTensor(torch.stack(stack), affine=ref.affine)
        out["has-reference"] = torch.tensor([m in refs for m in modalities])
    return out

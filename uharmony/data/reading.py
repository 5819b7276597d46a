"""Read and validate one case: every problem becomes a DataError that names the file."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from nibabel.openers import ImageOpener

from .cases import MODALITIES, Case, DataError
from .regions import LABEL_MAPS

_LOADER = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=False, dtype=np.float32)
MAX_VOXELS = 512**3  # per volume (a 4-D file: all its channels); a brain MRI at 0.5 mm is about 400^3
MAX_CHANNELS = 16


def check_header(path: str) -> None:
    """Refuse a file from its header alone, before any voxel is read: a shape too large (a tiny file can
    declare a huge volume), a voxel size that is zero, negative or not finite, a truncated file."""
    try:
        header = nib.load(path).header  # reads the header only
        with ImageOpener(path) as f:  # as written: nibabel's load silently turns a zero voxel size into 1 mm
            raw = type(header).from_fileobj(f, check=False)
        shape, zooms = tuple(int(s) for s in header.get_data_shape()), raw.get_zooms()
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for corrupt headers
        raise DataError(path, f"unreadable image header ({type(exc).__name__}: {exc})") from None
    if len(shape) not in (3, 4) or min(shape) < 1 or (len(shape) == 4 and shape[3] > MAX_CHANNELS):
        raise DataError(
            path, f"expected a 3-D image (or 4-D with at most {MAX_CHANNELS} channels), header says {shape}"
        )
    if math.prod(shape) > MAX_VOXELS:
        raise DataError(path, f"header declares {math.prod(shape):,} voxels (more than {MAX_VOXELS:,}); not read")
    if not all(math.isfinite(float(z)) and float(z) > 0 for z in zooms[:3]):
        raise DataError(path, f"voxel size {tuple(float(z) for z in zooms[:3])} mm must be positive and finite")
    if not str(path).endswith(".gz"):
        needed = int(header.get("vox_offset", 0)) + math.prod(shape) * header.get_data_dtype().itemsize
        if os.path.getsize(path) < needed:
            raise DataError(path, f"file is truncated ({os.path.getsize(path)} bytes, header needs {needed})")


def _load(path: str, image: bool = True) -> MetaTensor:
    if not path or not os.path.exists(path):
        raise DataError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise DataError(path, "empty file")
    check_header(path)
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


def read_case(case: Case, modalities: Sequence[str] = MODALITIES) -> dict:
    """Load a case as ``{"image": (M, X, Y, Z) MetaTensor, "present": (M,) bool, "label": (1, ...)}``.

    Channels follow ``modalities`` (the model's input order). Modalities the case does not have are
    zero-filled with ``present`` False; modalities the case has but the model does not know are not
    read. A modality the case is expected to have but whose file is missing is an error (the case is
    skipped in federation mode).
    """
    modalities = tuple(modalities)
    if not modalities:
        raise ValueError("read_case: no modality requested")
    channels: dict[str, MetaTensor] = {}
    ref = ref_path = None
    if case.image4d is not None:
        img4 = _load(case.image4d)
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
            img = _load(path)
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
        lab = _load(case.label, image=False)
        if lab.dim() != 3:
            raise DataError(case.label, f"expected a 3-D label map, got shape {tuple(lab.shape)}")
        _same_grid(ref, ref_path, lab, case.label)
        allowed = LABEL_MAPS[case.label_map]["values"]
        values = torch.unique(lab)
        bad = sorted({float(v) for v in values.tolist()} - {float(a) for a in allowed})
        if bad:
            raise DataError(case.label, f"label values {bad} outside the dataset's set {list(allowed)}")
        out["label"] = MetaTensor(lab.as_tensor().unsqueeze(0), affine=ref.affine)
    return out

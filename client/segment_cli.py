"""``uharmony-segment`` and ``uharmony-calibrate``: use the federated model at a hospital.

    uharmony-calibrate --model runs/latest/final_model.pt --input /data/unlabeled --state-dir /var/lib/uharmony
    uharmony-segment --model runs/latest/final_model.pt --input CASE_DIR --out seg.nii.gz [--state-dir DIR]

Inputs are case folders in BraTS naming with any subset of the modalities. ``segment`` writes BraTS
labels (1 necrotic core, 2 oedema, 4 enhancing) on the input's grid (same shape and affine) and prints
the volume of each region in mL. Without ``--state-dir`` the case's own statistics are used
(calibration on that scan alone). No site label is needed: the domain-gated head decides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from server.checkpoint import CheckpointError, load_checkpoint
from simulation.datasets.federation import BRATS23_SUFFIX, MODALITIES, Case, DataError
from simulation.datasets.pipeline import preprocess_transform
from simulation.datasets.reading import read_case
from uharmony import UHarmonyNorm, model_from_spec
from uharmony.federated import ModelRoles, load_global_and_local, local_state_of
from uharmony.inference import calibrate, regions_to_brats, segment

from .site_state import load_local_state, save_local_state


def case_from_folder(folder: Path) -> Case:
    if not folder.is_dir():
        raise DataError(folder, "not a case folder")
    images = {}
    for m in MODALITIES:
        for name in (f"{folder.name}_{m}.nii.gz", f"{folder.name}-{BRATS23_SUFFIX[m]}.nii.gz"):
            if (folder / name).exists():
                images[m] = str(folder / name)
    if not images:
        raise DataError(folder, f"no modality file named <case>_{{{','.join(MODALITIES)}}}.nii.gz (or BraTS 2023 names)")
    return Case(folder.name, images, None, "brats2021", tuple(images))


def load_model(path: Path, state_dir: Path | None):
    try:
        blob = load_checkpoint(path.parent, path.name)
    except CheckpointError as exc:
        raise DataError(path, str(exc)) from None
    model = model_from_spec(blob["spec"])
    roles = ModelRoles(model, "uharmony")
    saved = load_local_state(state_dir)[0] if state_dir and load_local_state(state_dir) else None
    load_global_and_local(model, roles, blob["state"], saved)
    cfg_path = path.parent / "config.json"
    run_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    return model.eval(), roles, float(run_cfg.get("spacing", 3.0)), int(run_cfg.get("patch-size", 32)), saved is not None


def _cases(inp: Path) -> list[Path]:
    if any(inp.glob("*.nii.gz")):
        return [inp]
    return sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))


def main_calibrate(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-calibrate", description="Harmonization statistics from unlabeled scans")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True, help="a case folder or a folder of case folders")
    p.add_argument("--state-dir", type=Path, required=True)
    a = p.parse_args(argv)
    try:
        model, roles, spacing, roi, _ = load_model(a.model, None)
        pre = preprocess_transform(spacing, with_label=False)
        items, skipped = [], []
        for folder in _cases(a.input):
            try:
                item = pre(read_case(case_from_folder(folder)))
                items.append((item["image"].as_tensor(), item["present"]))
            except DataError as exc:
                skipped.append(str(exc))
        updates = calibrate(model, items, roi)
        save_local_state(a.state_dir, local_state_of(model, roles), {"calibrated_on": len(items), "model": str(a.model)})
    except (DataError, ValueError) as exc:
        print(f"uharmony-calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"scans": len(items), "skipped": skipped, "updates": updates, "state_dir": str(a.state_dir)}))
    return 0


def main_segment(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-segment", description="Segment a case with the federated model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True, help="case folder (BraTS naming, any modality subset)")
    p.add_argument("--out", type=Path, required=True, help="output .nii.gz")
    p.add_argument("--state-dir", type=Path, default=None, help="site statistics from uharmony-calibrate")
    a = p.parse_args(argv)
    try:
        model, roles, spacing, roi, calibrated = load_model(a.model, a.state_dir)
        pre = preprocess_transform(spacing, with_label=False)
        raw = read_case(case_from_folder(a.input))
        ref = nib.load(next(iter(case_from_folder(a.input).images.values())))
        item = pre(raw)
        if not calibrated and any(isinstance(m, UHarmonyNorm) for m in model.modules()):
            calibrate(model, [(item["image"].as_tensor(), item["present"])], roi)
            model.eval()
        prob = segment(model, item["image"].as_tensor(), item["present"], roi)
        pred = MetaTensor(prob)
        pred.copy_meta_from(item["image"])
        inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
        prob_orig = inv({"pred": pred, "image": item["image"]})["pred"]
        labels = regions_to_brats(torch.as_tensor(prob_orig)).numpy()
    except (DataError, ValueError) as exc:
        print(f"uharmony-segment: error: {exc}", file=sys.stderr)
        return 2
    if labels.shape != ref.shape[:3]:
        print(f"uharmony-segment: error: output shape {labels.shape} differs from input {ref.shape}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), ref.affine), a.out)
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000.0
    volumes = {"ET": float((labels == 4).sum()), "TC": float(np.isin(labels, (1, 4)).sum()), "WT": float((labels > 0).sum())}
    print(json.dumps({"out": str(a.out), "volumes_ml": {k: round(v * voxel_ml, 2) for k, v in volumes.items()},
                      "modalities": list(case_from_folder(a.input).images), "site_statistics": "state-dir" if calibrated else "this scan"}))
    return 0

"""``uharmony-segment`` and ``uharmony-calibrate``: use the federated model at a hospital.

    uharmony-calibrate --model runs/latest/final_model.pt --input /data/unlabeled --state-dir /var/lib/uharmony
    uharmony-segment --model runs/latest/final_model.pt --input CASE_DIR --out seg.nii.gz [--state-dir DIR]
    uharmony-segment ... --derive      # + TTA uncertainty, presence, Grad-CAM and a "review recommended" flag

Inputs are case folders in BraTS naming with any subset of the model's modalities (including any a
joining site added, e.g. ``<case>_adc.nii.gz``). ``segment`` writes BraTS labels (1 necrotic core,
2 oedema, 4 enhancing; 3 resection cavity if the model has learnt that class) on the input's grid (same
shape and affine) and prints the volume of each region in mL. Without ``--state-dir`` the case's own statistics are used
(calibration on that scan alone). No site label is needed: the domain-gated head decides.

``--derive`` adds UMS-Rep's derivable outputs, with no training (``uharmony.umsrep.derive``): a test-time
augmentation uncertainty (``<out>_uncertainty.nii.gz``: the WT probability's SD over flipped inputs, and the
flips' agreement), the presence head's probabilities and its Grad-CAM map (``<out>_gradcam.nii.gz``) when the
model has one, and a "review recommended" flag with its reasons.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from tqdm import tqdm

from uharmony import LOCAL, UHarmonyNorm, model_from_spec
from uharmony.checkpoint import CheckpointError, load_checkpoint
from uharmony.data import MODALITIES, Case, DataError, preprocess_transform, read_case
from uharmony.data.cases import BRATS23_SUFFIX
from uharmony.export import load_bundle
from uharmony.federated import ModelRoles, load_global_and_local, local_state_of
from uharmony.files import append_jsonl
from uharmony.inference import RC_LABEL, calibrate, label_volumes, regions_to_brats, segment
from uharmony.signing import SignatureError, load_public_keys
from uharmony.site_state import load_local_state, save_local_state


def case_from_folder(folder: Path, modalities=MODALITIES) -> Case:
    """The files of ``modalities`` (the model's) that a case folder has; other files are ignored."""
    if not folder.is_dir():
        raise DataError(folder, "not a case folder")
    images = {}
    for m in modalities:
        for name in (f"{folder.name}_{m}.nii.gz", f"{folder.name}-{BRATS23_SUFFIX.get(m, m)}.nii.gz"):
            if (folder / name).exists():
                images[m] = str(folder / name)
    if not images:
        raise DataError(
            folder,
            f"no modality file named <case>_{{{','.join(modalities)}}}.nii.gz (or BraTS 2023 names) "
            "for the model's modalities",
        )
    return Case(folder.name, images, None, "brats2021", tuple(images))


def load_model(path: Path, state_dir: Path | None, trusted: list | None = None):
    """(model, roles, spacing, patch size, site entries loaded?) of a federated model file.

    The roles follow the strategy the model was trained with (recorded in the file): the site-local
    entries (U-Harmony's statistics, FedBN's normalization layers, a local-only model) come from
    ``state_dir``; without one they keep their initial values (U-Harmony then calibrates on each scan).
    """
    if path.is_dir():  # a MONAI bundle written by uharmony-export
        model, spacing, roi, meta = load_bundle(path)
        return (
            model,
            ModelRoles(model, str(meta.get("strategy"))),
            spacing,
            roi,
            meta["site_statistics"] != "initial values",
        )
    try:
        blob = load_checkpoint(path.parent, path.name, trusted=trusted)
    except CheckpointError as exc:
        raise DataError(path, str(exc)) from None
    model = model_from_spec(blob["spec"])
    strategy = blob["extra"].get("strategy")
    try:
        roles = ModelRoles(model, str(strategy))
    except ValueError as exc:
        raise DataError(path, f"does not name a known strategy that trained it ({exc})") from None
    on_disk = load_local_state(state_dir) if state_dir else None
    saved = on_disk[0] if on_disk else None
    if saved is None and not roles.global_keys():
        raise DataError(path, f"a {strategy!r} model lives entirely at its site: give that site's --state-dir")
    if saved is None and roles.keys(LOCAL) and not any(isinstance(m, UHarmonyNorm) for m in model.modules()):
        print(
            f"uharmony-segment: warning: {path} keeps {len(roles.keys(LOCAL))} entries at each site "
            f"({strategy}); without --state-dir they keep their initial values",
            file=sys.stderr,
        )
    load_global_and_local(model, roles, blob["state"], saved)
    cfg_path = path.parent / "config.json"
    run_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    return (
        model.eval(),
        roles,
        float(run_cfg.get("spacing", 3.0)),
        int(run_cfg.get("patch-size", 32)),
        saved is not None,
    )


def _cases(inp: Path) -> tuple[list[Path], list[str]]:
    """(case folders, notes on what was ignored): a folder of case folders is a batch (files beside them
    are ignored and reported); a folder with image files and no sub-folder is one case."""
    folders = sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [inp], []
    stray = sorted(p.name for p in inp.iterdir() if p.is_file() and not p.name.startswith("."))
    return folders, [f"{inp / name}: not a case folder; ignored" for name in stray]


def _trusted(path: Path | None, prog: str) -> list | None:
    if path is None:
        print(
            f"{prog}: warning: the model's signature is not checked (give --trusted-key, e.g. the "
            "trusted-entities.yaml your SuperNode uses)",
            file=sys.stderr,
        )
        return None
    try:
        return load_public_keys(path)
    except SignatureError as exc:
        raise DataError(path, str(exc)) from None


def main_calibrate(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-calibrate", description="Harmonization statistics from unlabeled scans")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True, help="a case folder or a folder of case folders")
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument(
        "--trusted-key", type=Path, default=None, help="coordinator's public key(s): the model must be signed"
    )
    a = p.parse_args(argv)
    try:
        model, roles, spacing, roi, _ = load_model(a.model, None, _trusted(a.trusted_key, "uharmony-calibrate"))
        pre = preprocess_transform(spacing, with_label=False)
        folders, skipped = _cases(a.input)
        items = []
        for folder in folders:
            try:
                item = pre(read_case(case_from_folder(folder, model.modalities), model.modalities))
                items.append((item["image"].as_tensor(), item["present"]))
            except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the others
                skipped.append(str(exc) if isinstance(exc, DataError) else f"{folder}: {type(exc).__name__}: {exc}")
        updates = calibrate(model, items, roi)
        save_local_state(
            a.state_dir, local_state_of(model, roles), {"calibrated_on": len(items), "model": str(a.model)}
        )
    except (DataError, ValueError) as exc:
        print(f"uharmony-calibrate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"scans": len(items), "skipped": skipped, "updates": updates, "state_dir": str(a.state_dir)}))
    return 0


def segment_case(
    model,
    spacing: float,
    roi: int,
    calibrated: bool,
    folder: Path,
    out: Path,
    png: Path | None = None,
    derive: bool = False,
) -> dict:
    """Segment one case folder; writes ``out`` (and ``png``); returns its report (with its seconds)."""
    t0 = time.perf_counter()
    case = case_from_folder(folder, model.modalities)
    pre = preprocess_transform(spacing, with_label=False)
    item = pre(read_case(case, model.modalities))
    ref = nib.load(next(iter(case.images.values())))
    if not calibrated and any(isinstance(m, UHarmonyNorm) for m in model.modules()):
        calibrate(model, [(item["image"].as_tensor(), item["present"])], roi)  # this scan's own statistics
        model.eval()
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)

    def to_input_grid(volume: torch.Tensor) -> torch.Tensor:
        meta = MetaTensor(volume)
        meta.copy_meta_from(item["image"])
        return torch.as_tensor(inv({"pred": meta, "image": item["image"]})["pred"])

    derived, extra = _derive(model, item, roi) if derive else (None, {})
    prob = derived["plain"] if derived else segment(model, item["image"].as_tensor(), item["present"], roi)
    labels = regions_to_brats(to_input_grid(prob), model.regions).numpy()
    if labels.shape != ref.shape[:3]:
        raise DataError(folder, f"output shape {labels.shape} differs from the input's {ref.shape}")
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), ref.affine), out)
    for name, volume in (derived or {}).get("maps", {}).items():  # float maps on the input's grid
        path = out.with_name(out.name.replace(".nii.gz", f"_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(to_input_grid(volume[None])[0].numpy().astype(np.float32), ref.affine), path)
        extra.setdefault("maps", {})[name] = str(path)
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000.0
    if png is not None:
        _overlay(np.asarray(ref.dataobj), labels, png)
    return {
        "case": folder.name,
        "out": str(out),
        "modalities": list(case.images),
        "volumes_ml": label_volumes(labels, voxel_ml, model.regions),
        "site_statistics": "state-dir" if calibrated else "this scan",
        **extra,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _derive(model, item: dict, roi: int) -> tuple[dict, dict]:
    """UMS-Rep's derivable outputs of one preprocessed case: (tensors, report entries)."""
    from uharmony.umsrep.derive import grad_cam, presence_probability, review, tta_uncertainty

    image, present = item["image"].as_tensor(), item["present"]
    tta = tta_uncertainty(model, image, present, roi)
    wt = list(model.regions).index("WT")
    maps = {"uncertainty": tta["std"][wt]}
    presence = None
    report = {"uncertainty": {"wt_agreement": round(tta["agreement"], 3), "lesion_std": round(tta["lesion_std"], 3)}}
    if "presence" in model.tasks:
        presence = presence_probability(model, image, present)
        report["presence"] = {r: round(float(p), 3) for r, p in zip(model.regions, presence)}
        maps["gradcam"] = grad_cam(model, image, present, "WT")
    flag, reasons = review(tta, presence, model)
    report.update(review_recommended=flag, review_reasons=reasons)
    return {"plain": tta["plain"], "maps": maps}, report


def _overlay(image: np.ndarray, labels: np.ndarray, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((labels > 0).sum(axis=(0, 1)))) if labels.any() else labels.shape[2] // 2
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(np.rot90(image[:, :, z]), cmap="gray")
    ax.imshow(np.rot90(np.ma.masked_equal(labels[:, :, z], 0)), cmap="autumn", alpha=0.5, vmin=0, vmax=4)
    cavity = f", {RC_LABEL} cavity" if (labels == RC_LABEL).any() else ""
    ax.set_title(f"slice {z}: 1 core, 2 oedema, 4 enhancing{cavity}", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main_segment(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-segment", description="Segment cases with the federated model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--input",
        type=Path,
        required=True,
        help="a case folder (BraTS naming, any modality subset) or a folder of case folders (batch)",
    )
    p.add_argument("--out", type=Path, required=True, help="output .nii.gz (one case) or folder (batch)")
    p.add_argument("--state-dir", type=Path, default=None, help="site statistics from uharmony-calibrate")
    p.add_argument("--png", action="store_true", help="also write a PNG overlay next to each output")
    p.add_argument(
        "--derive",
        action="store_true",
        help="also: TTA uncertainty, presence + Grad-CAM (if the model has a presence head), review flag",
    )
    p.add_argument(
        "--trusted-key", type=Path, default=None, help="coordinator's public key(s): the model must be signed"
    )
    a = p.parse_args(argv)
    try:
        model, _, spacing, roi, calibrated = load_model(
            a.model, a.state_dir, _trusted(a.trusted_key, "uharmony-segment")
        )
        if not a.input.is_dir():
            raise DataError(a.input, "not a folder")
    except (DataError, ValueError) as exc:
        print(f"uharmony-segment: error: {exc}", file=sys.stderr)
        return 2
    folders, skipped = _cases(a.input)
    batch = folders != [a.input]
    reports = []
    if batch:  # each case's line is written as soon as it is done
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "volumes.jsonl").write_text("")
    for folder in tqdm(folders, desc="segmenting", unit="case", disable=not batch):
        out = a.out / f"{folder.name}_seg.nii.gz" if batch else a.out
        try:
            reports.append(
                segment_case(
                    model,
                    spacing,
                    roi,
                    calibrated,
                    folder,
                    out,
                    out.with_name(out.name.replace(".nii.gz", ".png")) if a.png else None,
                    a.derive,
                )
            )
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            reason = str(exc) if isinstance(exc, DataError) else f"{folder}: {type(exc).__name__}: {exc}"
            skipped.append(reason)
            print(f"uharmony-segment: skipping {folder}: {reason}", file=sys.stderr)
            continue
        if batch:
            append_jsonl(a.out / "volumes.jsonl", reports[-1])
    if batch:
        per_case = round(sum(r["seconds"] for r in reports) / len(reports), 2) if reports else None
        print(
            json.dumps(
                {
                    "cases": len(reports),
                    "skipped": skipped,
                    "seconds_per_case": per_case,
                    "volumes": str(a.out / "volumes.jsonl"),
                }
            )
        )
    elif reports:
        print(json.dumps(reports[0]))
    return 0 if reports else 2

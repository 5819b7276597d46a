"""``uharmony-segment`` and ``uharmony-calibrate``: use the federated model at a hospital.

    uharmony-calibrate --model runs/latest/final_model.pt --input /data/unlabeled --state-dir /var/lib/uharmony
    uharmony-segment --model runs/latest/final_model.pt --input CASE_DIR --out seg.nii.gz [--state-dir DIR]
    uharmony-segment ... --derive      # + TTA uncertainty, presence, Grad-CAM and a "review recommended" flag

Inputs are case folders in BraTS naming, or nnU-Net-named channel files (``<case>_0000.nii.gz``: see
``client/segment_inputs.py``), with any subset of the model's modalities (including any a joining site added,
e.g. ``<case>_adc.nii.gz``). ``--device`` picks cpu (default), cuda or auto. A batch that had to skip a case
says so at the end and exits 1 (2: nothing segmented). ``segment`` writes BraTS labels (1 necrotic core,
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
from uharmony.data import Case, DataError, preprocess_transform, read_case
from uharmony.data.cases import case_from_folder  # noqa: F401 - also this module's name for it (before it moved)
from uharmony.federation.federated import ModelRoles, load_global_and_local, local_state_of
from uharmony.federation.site_state import load_local_state, save_local_state
from uharmony.files import append_jsonl
from uharmony.model.inference import estimate_site_statistics, label_volumes, regions_to_brats, segment
from uharmony.records.bundle_trust import BundleError
from uharmony.records.checkpoint import CheckpointError
from uharmony.records.deployable import open_model_file
from uharmony.records.export import open_bundle
from uharmony.records.release import ReleaseError, Revocations, load_revocations
from uharmony.records.signing import SignatureError, load_public_keys

from .segment_inputs import add_input_options, case_name, find_cases, output_path, torch_device


def load_model(
    path: Path,
    state_dir: Path | None,
    trusted: list | None = None,
    allow_checkpoint: bool = False,
    revoked: Revocations | None = None,
    accept: tuple[str, ...] = ("final",),
):
    """(model, roles, spacing, patch size, site entries loaded?) of a federated model file or bundle.

    Checked before use: with ``trusted`` keys the manifest's signature, every digest and the release record
    (a final model, not expired, not on ``revoked``; a checkpoint only with ``allow_checkpoint``). The
    spacing and patch size come from the signed file itself, never from files beside it. The roles follow
    the strategy the model was trained with (recorded in the file): the site-local entries (U-Harmony's
    statistics, FedBN's normalization layers, a local-only model) come from ``state_dir``; without one they
    keep their initial values (U-Harmony then calibrates on each scan).
    """
    if path.is_dir():  # a MONAI bundle written by uharmony-export
        try:
            model, spacing, roi, meta, _ = open_bundle(path, trusted, allow_checkpoint, revoked)
        except BundleError as exc:
            raise DataError(path, str(exc)) from None
        if state_dir is not None:
            _warn(f"{path} is a bundle with its own site statistics ({meta['site_statistics']}); --state-dir ignored")
        return (
            model,
            ModelRoles(model, str(meta.get("strategy"))),
            spacing,
            roi,
            meta["site_statistics"] != "initial values",
        )
    try:
        blob = open_model_file(path, trusted, allow_checkpoint, revoked, warn=_warn, accept=accept)
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
        _warn(
            f"{path} keeps {len(roles.keys(LOCAL))} entries at each site ({strategy}); without --state-dir they "
            "keep their initial values"
        )
    load_global_and_local(model, roles, blob["state"], saved)
    settings = blob["settings"]
    return model.eval(), roles, settings["spacing-mm"], settings["patch-size"], saved is not None


def _warn(text: str, prog: str = "uharmony-segment") -> None:
    print(f"{prog}: warning: {text}", file=sys.stderr)


def _revocations(path: Path | None) -> Revocations | None:
    if path is None:
        return None
    try:
        return load_revocations(path)
    except ReleaseError as exc:
        raise DataError(path, str(exc)) from None


def add_trust_options(p: argparse.ArgumentParser) -> None:
    """--trusted-key, --allow-checkpoint and --revoked: how a tool checks the model it is given."""
    p.add_argument(
        "--trusted-key",
        type=Path,
        default=None,
        help="the public key(s) that sign released models: the coordinator's model-signing.pub (not the "
        "SuperNode's trusted-entities.yaml: that holds the app-signing key), or a bundle signer's .pub; the model "
        "must be signed by one",
    )
    p.add_argument(
        "--allow-checkpoint",
        action="store_true",
        help="accept a signed intermediate checkpoint (default: only a run's released final model)",
    )
    p.add_argument(
        "--revoked", type=Path, default=None, help="revocation list: a model file's SHA-256 or 'run <run-id>' a line"
    )


def _trusted(path: Path | None, prog: str) -> list | None:
    if path is None:
        print(
            f"{prog}: warning: the model's signature is not checked (give --trusted-key: the coordinator's "
            "model-signing.pub)",
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
    p.add_argument(
        "--input", type=Path, required=True, help="a case folder or a folder of case folders (or nnU-Net-named files)"
    )
    p.add_argument("--state-dir", type=Path, required=True)
    add_trust_options(p)
    add_input_options(p)
    a = p.parse_args(argv)
    try:
        device = torch_device(a.device)
        trusted = _trusted(a.trusted_key, "uharmony-calibrate")
        model, roles, spacing, roi, _ = load_model(a.model, None, trusted, a.allow_checkpoint, _revocations(a.revoked))
        pre = preprocess_transform(spacing, with_label=False)
        entries, skipped, ignored, _ = find_cases(a.input, model.modalities, a.channels)
        skipped += ignored
        items = []
        for entry in entries:
            try:
                case = entry if isinstance(entry, Case) else case_from_folder(entry, model.modalities)
                item = pre(read_case(case, model.modalities, spacing))
                items.append((item["image"].as_tensor(), item["present"]))
            except Exception as exc:  # noqa: BLE001 - one bad scan must not stop the others
                skipped.append(str(exc) if isinstance(exc, DataError) else f"{entry}: {type(exc).__name__}: {exc}")
        updates = estimate_site_statistics(model, items, roi, device=device)
        model.cpu()
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
    folder: Path | Case,
    out: Path,
    png: Path | None = None,
    derive: bool = False,
) -> dict:
    """Segment one case (a BraTS case folder, or the ``Case`` of nnU-Net-named files) on the device the model is
    on; writes ``out`` (and ``png``); returns its report (with its seconds)."""
    t0 = time.perf_counter()
    device = str(next(model.parameters()).device)
    case = folder if isinstance(folder, Case) else case_from_folder(folder, model.modalities)
    pre = preprocess_transform(spacing, with_label=False)
    item = pre(read_case(case, model.modalities, spacing))
    ref = nib.load(next(iter(case.images.values())))
    if not calibrated and any(isinstance(m, UHarmonyNorm) for m in model.modules()):
        estimate_site_statistics(
            model, [(item["image"].as_tensor(), item["present"])], roi, device=device
        )  # this scan's own
        model.eval()
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)

    def to_input_grid(volume: torch.Tensor) -> torch.Tensor:
        meta = MetaTensor(volume)
        meta.copy_meta_from(item["image"])
        return torch.as_tensor(inv({"pred": meta, "image": item["image"]})["pred"])

    derived, extra = _derive(model, item, roi, device) if derive else (None, {})
    prob = derived["plain"] if derived else segment(model, item["image"].as_tensor(), item["present"], roi, device)
    labels = regions_to_brats(to_input_grid(prob), model.regions).numpy()
    if labels.shape != ref.shape[:3]:
        raise DataError(case.case_id, f"output shape {labels.shape} differs from the input's {ref.shape}")
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), ref.affine), out)
    for name, volume in (derived or {}).get("maps", {}).items():  # float maps on the input's grid
        path = out.with_name(out.name.replace(".nii.gz", f"_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(to_input_grid(volume[None])[0].numpy().astype(np.float32), ref.affine), path)
        extra.setdefault("maps", {})[name] = str(path)
    voxel_ml = float(np.prod(ref.header.get_zooms()[:3])) / 1000.0
    if png is not None:
        _overlay(case.images, labels, png, case.case_id)
    return {
        "case": case.case_id,
        "out": str(out),
        "modalities": list(case.images),
        "volumes_ml": label_volumes(labels, voxel_ml, model.regions),
        "site_statistics": "state-dir" if calibrated else "this scan",
        **extra,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _derive(model, item: dict, roi: int, device: str = "cpu") -> tuple[dict, dict]:
    """UMS-Rep's derivable outputs of one preprocessed case: (tensors on the CPU, report entries)."""
    from uharmony.umsrep.derive import grad_cam, presence_probability, review, tta_uncertainty

    image, present = item["image"].as_tensor(), item["present"]
    tta = tta_uncertainty(model, image, present, roi, device)
    wt = list(model.regions).index("WT")
    maps = {"uncertainty": tta["std"][wt]}
    presence = None
    report = {"uncertainty": {"wt_agreement": round(tta["agreement"], 3), "lesion_std": round(tta["lesion_std"], 3)}}
    if "presence" in model.tasks:
        on = (image.to(device), torch.as_tensor(present).to(device))  # the whole scan, where the model is
        presence = presence_probability(model, *on).cpu()
        report["presence"] = {r: round(float(p), 3) for r, p in zip(model.regions, presence)}
        maps["gradcam"] = grad_cam(model, *on, "WT").cpu()
    flag, reasons = review(tta, presence, model)
    report.update(review_recommended=flag, review_reasons=reasons)
    return {"plain": tta["plain"], "maps": maps}, report


def _overlay(images: dict[str, str], labels: np.ndarray, png: Path, case: str = "") -> None:
    """The axial slice with the most labelled voxels inside the head (where the scan is not empty: a poor model's
    labels may fill the background too) of the case's FLAIR (else another contrast), beside the same slice with
    the output labels in fixed colours and a legend."""
    from uharmony.records.plots import draw_labels, legend_handles, protocol_entries, pyplot

    plt = pyplot()
    modality = next((m for m in ("flair", "t2", "t1ce", "t1") if m in images), next(iter(images)))
    scan = nib.load(images[modality])
    image = np.asarray(scan.dataobj)
    image = image[..., 0] if image.ndim == 4 else image
    codes = tuple(nib.aff2axcodes(scan.affine)[:2])  # the patient's directions at the slice's edges
    inside = (labels > 0) & (image != 0) if image.shape == labels.shape else labels > 0
    counts = inside.sum(axis=(0, 1)) if inside.any() else (labels > 0).sum(axis=(0, 1))
    z = int(np.argmax(counts)) if counts.any() else labels.shape[2] // 2
    fig, axes = plt.subplots(1, 2, figsize=(7, 4.2), layout="constrained")
    draw_labels(axes[0], image[:, :, z], None, codes=codes)
    draw_labels(axes[1], image[:, :, z], labels[:, :, z], codes=codes)
    axes[0].set_title(f"{modality.upper()}, axial slice {z + 1} of {labels.shape[2]}", fontsize=9)
    axes[1].set_title("with the model's labels", fontsize=9)
    fig.suptitle(f"{case}: segmentation (the slice with the most labelled voxels in the head)", fontsize=10)
    handles = legend_handles(protocol_entries("output", labels))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
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
        help="a case folder (BraTS naming, any modality subset), a folder of case folders (batch), or nnU-Net-named "
        "files (<case>_0000.nii.gz ...; see --channels)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .nii.gz (one case) or folder (a batch; one case: <folder>/<case>_seg.nii.gz)",
    )
    p.add_argument("--state-dir", type=Path, default=None, help="site statistics from uharmony-calibrate")
    p.add_argument("--png", action="store_true", help="also write a PNG overlay next to each output")
    p.add_argument(
        "--derive",
        action="store_true",
        help="also: TTA uncertainty, presence + Grad-CAM (if the model has a presence head), review flag",
    )
    add_trust_options(p)
    add_input_options(p)
    a = p.parse_args(argv)
    try:
        device = torch_device(a.device)
        trusted = _trusted(a.trusted_key, "uharmony-segment")
        model, _, spacing, roi, calibrated = load_model(
            a.model, a.state_dir, trusted, a.allow_checkpoint, _revocations(a.revoked)
        )
        model.to(device)
        folders, skipped, ignored, batch = find_cases(a.input, model.modalities, a.channels)
    except (DataError, ValueError) as exc:
        print(f"uharmony-segment: error: {exc}", file=sys.stderr)
        return 2
    for reason in skipped:
        print(f"uharmony-segment: skipping {reason}", file=sys.stderr)
    reports = []
    if batch:  # each case's line is written as soon as it is done
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "volumes.jsonl").write_text("")
    for folder in tqdm(folders, desc="segmenting", unit="case", disable=not batch):
        out = output_path(a.out, case_name(folder), batch)
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
        summary = {"cases": len(reports), "skipped": skipped, "ignored": ignored, "seconds_per_case": per_case}
        print(json.dumps({**summary, "volumes": str(a.out / "volumes.jsonl")}))
    elif reports:
        print(json.dumps(reports[0]))
    if skipped:
        total = len(reports) + len(skipped)
        print(
            f"uharmony-segment: {len(skipped)} of {total} cases skipped (listed above and under 'skipped'); "
            f"{len(reports)} segmented; exit status {1 if reports else 2}",
            file=sys.stderr,
        )
    return (1 if skipped else 0) if reports else 2

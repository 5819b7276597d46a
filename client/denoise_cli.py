"""``uharmony-denoise``: a hospital denoises its scans with the federation's UMS-Rep phase-P artifact.

    uharmony-denoise --model runs/umsrep-p/umsrep.pt --input /data/case01 --out /data/case01-denoised
    uharmony-denoise --model umsrep.pt --input /data/cases --out /data/denoised --trusted-key pki/model-signing.pub

Phase P (docs/umsrep.md) trains the trunk and a reconstruction head to remove added noise; the head's output
is the residual *clean - noisy* in the scan's z-scored units. Each case is read and preprocessed as for
segmentation (RAS, the model's spacing, brain crop, z-score per modality on brain voxels); the residual is
brought back onto the input's grid, scaled by each modality's brain standard deviation there and added to the
input inside the brain: the output has the input's shape, affine, orientation and intensity scale, one
``<case>_<modality>.nii.gz`` per modality (the nnU-Net channel files of an nnU-Net-named input too), and
``denoise.jsonl`` lists what was written. The residual is made at the model's spacing: a model trained at
3 mm removes noise at that scale only. Without ``--state-dir`` each scan's own harmonization statistics are
used. Checks as ``uharmony-segment``: with ``--trusted-key`` the signature, digests and release (a ``umsrep``
release; ``--allow-checkpoint`` for a checkpoint). A case that fails is skipped and counted (exit 1; 2:
nothing written).
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
from monai.inferers import sliding_window_inference
from monai.transforms import Invertd
from tqdm import tqdm

from uharmony import LOCAL, UHarmonyNorm, model_from_spec
from uharmony.data import Case, DataError, preprocess_transform, read_case
from uharmony.data.cases import case_from_folder
from uharmony.federation.federated import ModelRoles
from uharmony.federation.site_state import load_local_state
from uharmony.files import append_jsonl
from uharmony.model.inference import estimate_site_statistics
from uharmony.model.task_heads import forward_tasks
from uharmony.records.checkpoint import CheckpointError
from uharmony.records.deployable import open_model_file
from uharmony.umsrep.plans import get_plan

from .segment_cli import _revocations, _trusted, _warn, add_trust_options
from .segment_inputs import add_input_options, case_name, find_cases, torch_device


def load_denoiser(path: Path, state_dir: Path | None, trusted, allow_checkpoint: bool, revoked):
    """(model, spacing, patch size, site statistics loaded?) of a phase-P artifact, checked as a released model
    (a ``umsrep`` release): every entry phase P trains must be there with its shape; the segmentation head,
    which phase P does not train, keeps its initial values and is not used."""
    try:
        blob = open_model_file(path, trusted, allow_checkpoint, revoked, warn=lambda t: _warn(t, "uharmony-denoise"),
                               accept=("umsrep", "final"))  # fmt: skip
    except CheckpointError as exc:
        raise DataError(path, str(exc)) from None
    model = model_from_spec(blob["spec"])
    if "recon" not in model.tasks:
        raise DataError(path, "has no reconstruction head: give a phase-P artifact (umsrep.pt)")
    state, own = blob["state"], model.state_dict()
    try:  # the site's own entries (U-Harmony's statistics) never leave a site: not in the artifact
        roles = ModelRoles(model, str(blob["extra"].get("strategy")))
        shared, local = set(roles.global_keys()), set(roles.keys(LOCAL))
    except ValueError as exc:
        raise DataError(path, f"does not name a known strategy that trained it ({exc})") from None
    needed = get_plan("pretrain").trained_keys(model) & shared
    bad = sorted(k for k in needed if k not in state or tuple(state[k].shape) != tuple(own[k].shape))
    if bad:
        raise DataError(path, f"lacks or misshapes {len(bad)} entries of the denoiser (e.g. {bad[:3]})")
    model.load_state_dict({**own, **{k: state[k].to(own[k].dtype) for k in needed}})
    on_disk = load_local_state(state_dir) if state_dir else None
    found = on_disk[0] if on_disk else {}
    saved = {k: v for k, v in found.items() if k in local and v.shape == own[k].shape}
    if saved and set(saved) != local & set(own):  # all of the site's statistics, or none (each scan's own then)
        _warn(f"{state_dir}: holds {len(saved)} of the model's {len(local)} site entries; each scan's own are used",
              "uharmony-denoise")  # fmt: skip
        saved = {}
    elif state_dir and not saved:
        _warn(f"{state_dir}: no site statistics for this model; each scan's own are used", "uharmony-denoise")
    model.load_state_dict({**model.state_dict(), **saved})
    settings = blob["settings"]
    return model.eval(), settings["spacing-mm"], settings["patch-size"], bool(saved)


@torch.no_grad()
def denoise_case(model, spacing: float, roi: int, calibrated: bool, folder: Path | Case, out: Path) -> dict:
    """Denoise one case into the folder ``out``; returns its report."""
    t0 = time.perf_counter()
    device = str(next(model.parameters()).device)
    case = folder if isinstance(folder, Case) else case_from_folder(folder, model.modalities)
    pre = preprocess_transform(spacing, with_label=False)
    item = pre(read_case(case, model.modalities, spacing))
    image, present = item["image"].as_tensor(), torch.as_tensor(item["present"]).bool()
    if not calibrated and any(isinstance(m, UHarmonyNorm) for m in model.modules()):
        estimate_site_statistics(model, [(image, item["present"])], roi, device=device)  # this scan's own
    model.eval()
    pres = present.view(1, -1).to(device)

    def residual(patch: torch.Tensor) -> torch.Tensor:
        return forward_tasks(model, patch, pres.expand(patch.shape[0], -1), want=("recon",))["recon"] - patch

    res = sliding_window_inference(image[None].to(device), (roi,) * 3, 2, residual, overlap=0.25, mode="gaussian")
    res = torch.as_tensor(res)[0].cpu() * (image != 0).any(0, keepdim=True)  # the brain only
    meta = MetaTensor(res)
    meta.copy_meta_from(item["image"])
    inv = Invertd(keys="res", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True)
    back = torch.as_tensor(inv({"res": meta, "image": item["image"]})["res"]).numpy()
    out.mkdir(parents=True, exist_ok=True)
    written, change = {}, {}
    for c, modality in enumerate(model.modalities):
        if not bool(present[c]) or modality not in case.images:
            continue
        src = nib.load(case.images[modality])
        raw = np.asarray(src.dataobj, dtype=np.float32)
        raw = raw[..., 0] if raw.ndim == 4 else raw
        if back.shape[1:] != raw.shape:
            raise DataError(case.case_id, f"{modality}: output shape {back.shape[1:]} differs from {raw.shape}")
        brain = raw != 0
        sd = float(raw[brain].std()) if brain.any() else 0.0
        den = np.where(brain, raw + sd * back[c], raw).astype(np.float32)
        name = Path(case.images[modality]).name
        path = out / (name if name.endswith((".nii.gz", ".nii")) else f"{case.case_id}_{modality}.nii.gz")
        header = src.header.copy()
        header.set_data_dtype(np.float32)  # an integer scan's header would round away what was removed
        header["scl_slope"], header["scl_inter"] = 1.0, 0.0
        nib.save(nib.Nifti1Image(den, src.affine, header), path)
        written[modality] = str(path)
        change[modality] = round(float(np.sqrt(np.mean((den[brain] - raw[brain]) ** 2)) / max(sd, 1e-12)), 4)
    if not written:
        raise DataError(case.case_id, "none of its scans is a modality the model denoises")
    return {
        "case": case.case_id,
        "out": written,
        "rms-change-brain-sd": change,  # how much was removed, in units of the scan's brain SD
        "site_statistics": "state-dir" if calibrated else "this scan",
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-denoise", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a phase-P artifact (umsrep.pt)")
    p.add_argument("--input", type=Path, required=True, help="a case folder, a folder of them, or nnU-Net files")
    p.add_argument("--out", type=Path, required=True, help="output folder (a batch: one sub-folder per case)")
    p.add_argument("--state-dir", type=Path, default=None, help="site statistics from uharmony-calibrate")
    add_trust_options(p)
    add_input_options(p)
    a = p.parse_args(argv)
    try:
        device = torch_device(a.device)
        trusted = _trusted(a.trusted_key, "uharmony-denoise")
        model, spacing, roi, calibrated = load_denoiser(
            a.model, a.state_dir, trusted, a.allow_checkpoint, _revocations(a.revoked)
        )
        model.to(device)
        folders, skipped, ignored, batch = find_cases(a.input, model.modalities, a.channels)
    except (DataError, ValueError) as exc:
        print(f"uharmony-denoise: error: {exc}", file=sys.stderr)
        return 2
    for reason in skipped:
        print(f"uharmony-denoise: skipping {reason}", file=sys.stderr)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "denoise.jsonl").write_text("")
    done = 0
    for folder in tqdm(folders, desc="denoising", unit="case", disable=not batch):
        name = case_name(folder)
        try:
            report = denoise_case(model, spacing, roi, calibrated, folder, a.out / name if batch else a.out)
        except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
            reason = str(exc) if isinstance(exc, DataError) else f"{folder}: {type(exc).__name__}: {exc}"
            skipped.append(reason)
            print(f"uharmony-denoise: skipping {folder}: {reason}", file=sys.stderr)
            continue
        append_jsonl(a.out / "denoise.jsonl", report)
        done += 1
    print(json.dumps({"cases": done, "skipped": skipped, "ignored": ignored, "report": str(a.out / "denoise.jsonl")}))
    if skipped:
        print(f"uharmony-denoise: {len(skipped)} of {done + len(skipped)} cases skipped", file=sys.stderr)
    return (1 if skipped else 0) if done else 2


if __name__ == "__main__":
    sys.exit(main())

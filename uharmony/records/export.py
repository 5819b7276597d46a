"""A model a hospital can deploy: a MONAI bundle of the federated model, with TorchScript beside it.

    configs/metadata.json    MONAI's bundle metadata: input modalities and channels, output regions, and
                             (``uharmony``) the model spec, the inference settings (spacing, patch size,
                             preprocessing) and what U-Harmony keeps at each site (the harmonization statistics)
    configs/inference.json   a MONAI bundle config that ``python -m monai.bundle run`` runs on a folder of case
                             folders (``dataset_dir``), writing BraTS labels on each input's grid to
                             ``output_dir``: MONAI's ``SupervisedEvaluator`` with the components of
                             ``uharmony.records.bundle_parts``
    models/model.pt          the whole state dict (the global model, and the site's statistics when exported
                             with its state folder), read with ``weights_only=True``
    models/model.ts          TorchScript (traced): logits of a patch; a gated model takes the scan's gate
                             weights as a second input (``ScanGatedInferer`` computes them)
    docs/README.md           how to check and run it
    manifest.json            SHA-256 of every file above and the release record; ``manifest.sig`` signs it

MONAI's ``verify_net_in_out`` checks the network against the metadata (:func:`verify_bundle`), and the
TorchScript outputs are compared with PyTorch's on a test volume. Nothing of a bundle is used before
``uharmony.records.bundle_trust.check_bundle`` passed and its config is the one :func:`inference_config` writes
for its metadata (:func:`open_bundle`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from uharmony.files import atomic_write, read_small
from uharmony.model.networks import UHarmonyNet, model_from_spec
from uharmony.model.norm import UHarmonyNorm
from uharmony.records.bundle_trust import EXPRESSIONS, MANIFEST, MODEL, BundleError, bundle_files, check_bundle
from uharmony.records.checkpoint import inference_settings, settings_of
from uharmony.records.signing import sign_manifest

SITE_NOTE = (
    "U-Harmony keeps each site's harmonization statistics at that site. Exported with a site's state folder, "
    "this bundle holds that site's statistics; without one, the statistics are the model's initial values and "
    "each scan is standardized with its own (calibrate on the hospital's unlabeled scans with "
    "uharmony-calibrate and export again for the best results). No site label is needed at inference: the "
    "domain-gated head decides per scan."
)


class TracedForward(nn.Module):
    """What ``model.ts`` computes: every modality present; a gated model mixes its experts with the given
    (B, D) gate weights (one decision per scan), a plain model takes the patch alone."""

    def __init__(self, model: UHarmonyNet) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("present", torch.ones(1, len(model.modalities)), persistent=False)

    def forward(self, x: torch.Tensor, gate_weights: torch.Tensor | None = None) -> torch.Tensor:
        present = self.present.expand(x.shape[0], -1)
        if gate_weights is None:
            return self.model(x, None, present)
        return self.model(x, None, present, gate_weights)


def metadata(model: UHarmonyNet, spacing: float, roi: int, run: dict) -> dict:
    modalities, regions = model.modalities, model.regions
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by uharmony-export"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "required_packages_version": {"uharmony-fl": _version("uharmony-fl")},
        "task": "Brain lesion segmentation from multi-modal MRI, trained by federated learning (U-Harmony)",
        "description": f"{model.spec['arch']} with U-Harmony normalization and a domain-gated head",
        "authors": "the consortium that trained it",
        "copyright": "the consortium that trained it",
        "intended_use": "research; not a medical device",
        "data_source": "the consortium's sites (the data never left them)",
        "image_classes": f"{len(modalities)} MRI modalities ({', '.join(modalities)}), z-scored per scan",
        "label_classes": ", ".join(f"{i}: {r}" for i, r in enumerate(regions)),
        "pred_classes": ", ".join(f"{i}: {r}" for i, r in enumerate(regions)),
        "references": ["U-Harmony (see docs/method.md of uharmony-fl)"],
        "uharmony": {
            "spec": model.spec,
            "inference": inference_settings(model.spec, spacing, roi),
            "spacing_mm": spacing,
            "patch_size": roi,
            "gated": model.gated,
            "harmonized_layers": sum(isinstance(m, UHarmonyNorm) for m in model.modules()),
            "site_statistics": run.get("site-statistics", "initial values"),
            "site_statistics_note": SITE_NOTE,
            "strategy": run.get("strategy"),
            "trained_rounds": run.get("round"),
        },
        "network_data_format": {
            "inputs": {"image": {**_patch_format("magnitude", modalities), "modality": "MR"}},
            "outputs": {"pred": _patch_format("labels", regions)},
        },
    }


def _patch_format(kind: str, channels: list[str]) -> dict:
    """A MONAI bundle's description of a patch tensor (any multiple of 8 per side) with named channels."""
    return {
        "type": "image",
        "format": kind,
        "num_channels": len(channels),
        "spatial_shape": ["8*n", "8*n", "8*n"],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": {str(i): c for i, c in enumerate(channels)},
    }


def inference_config(spec: dict | UHarmonyNet, spacing: float, roi: int, calibrate: bool = False) -> dict:
    """The bundle config ``python -m monai.bundle run`` runs: case folders of ``dataset_dir`` -> BraTS labels
    on each input's grid in ``output_dir`` (``<case>_seg.nii.gz``). A function of the metadata alone (the
    check of a bundle regenerates it); ``calibrate``: standardize each scan with its own statistics (a
    bundle without a site's). ``spec``: the model spec (or the model)."""
    spec = spec.spec if isinstance(spec, nn.Module) else spec
    return {
        "bundle_root": ".",
        "dataset_dir": "data",
        "output_dir": EXPRESSIONS["output_dir"],
        "device": EXPRESSIONS["device"],
        "modalities": list(spec["modalities"]),
        "regions": list(spec["regions"]),
        "spacing_mm": float(spacing),
        "patch_size": int(roi),
        "network_def": {"_target_": "uharmony.model.networks.model_from_spec", "spec": spec},
        "network": EXPRESSIONS["network"],
        "checkpoint": EXPRESSIONS["checkpoint"],
        "datalist": {"_target_": "uharmony.records.bundle_parts.case_folders", "folder": "@dataset_dir"},
        "preprocessing": {  # as uharmony.data.preprocess_transform(spacing, with_label=False)
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "uharmony.records.bundle_parts.ReadCaseFolderd",
                    "modalities": "@modalities",
                    "spacing": "@spacing_mm",
                },
                {
                    "_target_": "Orientationd",
                    "keys": "image",
                    "axcodes": "RAS",
                    "labels": [["L", "R"], ["P", "A"], ["I", "S"]],
                },
                {"_target_": "Spacingd", "keys": "image", "pixdim": [float(spacing)] * 3, "mode": "bilinear"},
                {
                    "_target_": "CropForegroundd",
                    "keys": "image",
                    "source_key": "image",
                    "margin": 2,
                    "allow_smaller": True,
                },
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": {
            "_target_": "uharmony.records.bundle_parts.ScanGatedInferer",
            "roi_size": "@patch_size",
            "overlap": 0.25,
            "calibrate": bool(calibrate),
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "uharmony.records.bundle_parts.RegionsToLabelsd", "keys": "pred", "regions": "@regions"},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_ext": ".nii.gz",
                    "output_dtype": "uint8",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "@checkpoint",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            }
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "run": [EXPRESSIONS["run#0"]],
    }


def export_bundle(
    model: UHarmonyNet,
    out: str | Path,
    spacing: float,
    roi: int,
    run: dict | None = None,
    release: dict | None = None,
    signer=None,
) -> dict:
    """Write the bundle of ``model`` (weights as loaded) to ``out`` with its manifest (every file's SHA-256
    and ``release``, a record of ``uharmony.records.release`` whose digest is filled in here), signed by ``signer``
    (an Ed25519 private key) when given; returns the TorchScript check."""
    out = Path(out)
    model = model.cpu().eval()
    run = run or {}
    meta = metadata(model, spacing, roi, run)
    calibrate = meta["uharmony"]["site_statistics"] == "initial values"
    for stale in (out / MANIFEST, out / "manifest.sig"):
        stale.unlink(missing_ok=True)  # an earlier export's signature must not cover this one
    atomic_write(out / "configs" / "metadata.json", json.dumps(meta, indent=2))
    config = inference_config(model.spec, spacing, roi, calibrate)
    atomic_write(out / "configs" / "inference.json", json.dumps(config, indent=2))
    atomic_write(out / MODEL, lambda p: torch.save(model.state_dict(), p))
    check = export_torchscript(model, out / "models" / "model.ts", roi)
    atomic_write(out / "docs" / "README.md", _readme(model, roi, meta))
    files = bundle_files(out)
    doc = {"format": "uharmony-bundle/1", "files": files}
    if release is not None:
        doc["release"] = {**release, "file": MODEL, "sha256": files[MODEL]}
    atomic_write(out / MANIFEST, json.dumps(doc, indent=2), mode=0o644)
    if signer is not None:
        sign_manifest(out, signer)
    return check


def _readme(model: UHarmonyNet, roi: int, meta: dict) -> str:
    gate = " and the scan's (B, D) gate weights" if model.gated else ""
    return f"""# {meta["task"]}

{SITE_NOTE}

## Check it first

`manifest.json` lists the SHA-256 of every file here and the release (run, round, kind, expiry);
`manifest.sig` is its signature. MONAI's `ConfigParser` runs any `$` expression and `_target_` in a config,
so check the bundle before giving `configs/inference.json` to MONAI:

    uharmony-export --verify <this folder> --trusted-key <the signer's public key, e.g. model-signing.pub>

It refuses a bundle whose files changed, that holds unlisted files, is signed by another key, has expired,
or whose configs hold anything `uharmony-export` does not write. (`pip install uharmony-fl` gives the
commands and the components the config names.)

## Run it

With MONAI, on a folder of case folders in BraTS naming (`CASE/CASE_t1.nii.gz`, `_t1ce`, `_t2`, `_flair`, or
BraTS 2023 names; missing modalities are allowed), from this folder:

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir CASES --output_dir OUT

writes `OUT/<case>_seg.nii.gz`: BraTS labels (1 necrotic core, 2 oedema, 4 enhancing; 3 resection cavity if
the model has that output) on each input's grid. Or with `uharmony-segment --model <this folder> --input CASE
--out seg.nii.gz --trusted-key KEY`, which checks the bundle itself.

`models/model.ts`: TorchScript, inputs (B, {len(model.modalities)}, {roi}, {roi}, {roi}) patches{gate}; outputs
logits of {", ".join(model.regions)}.
"""


def export_torchscript(model: UHarmonyNet, path: Path, roi: int, seed: int = 0) -> dict:
    """Trace :class:`TracedForward`, save it, reload it and compare its logits with PyTorch's on a random
    test volume; returns {"max-abs-diff"}, raising if it exceeds 1e-4."""
    gen = torch.Generator().manual_seed(seed)
    wrapper = TracedForward(model).eval()
    x = torch.randn(1, len(model.modalities), roi, roi, roi, generator=gen)
    args = (x,)
    if model.gated:
        w = torch.softmax(torch.randn(1, model.head.num_domains, generator=gen), 1)
        args = (x, w)
    with torch.no_grad(), warnings.catch_warnings():
        # the trace is checked below against PyTorch on another input; the tracer's generic warnings are not news,
        # nor is PyTorch's notice that TorchScript is deprecated (model.ts is an extra for TorchScript runtimes:
        # the bundle itself runs from models/model.pt): neither means anything to the hospital running the export
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is (deprecated|not supported)", category=DeprecationWarning
        )
        traced = torch.jit.trace(wrapper, args, check_trace=False)
        atomic_write(path, lambda p: torch.jit.save(traced, str(p)))
        loaded = torch.jit.load(str(path))
        x2 = torch.randn(1, len(model.modalities), roi, roi, roi, generator=gen)  # not the tracing input
        args2 = (x2, args[1]) if model.gated else (x2,)
        diff = float((loaded(*args2) - wrapper(*args2)).abs().max())
    if diff > 1e-4:
        raise ValueError(f"{path}: TorchScript differs from PyTorch by {diff:.2e} (> 1e-4)")
    return {"max-abs-diff": diff}


def load_bundle(folder: str | Path) -> tuple[UHarmonyNet, float, int, dict]:
    """(model with the bundle's weights, spacing in mm, patch size, the metadata's ``uharmony`` part) of an
    exported bundle, its inference settings checked (``uharmony.records.checkpoint.settings_of``). Nothing here
    checks digests or signatures: :func:`open_bundle` does."""
    folder = Path(folder)
    try:
        meta = json.loads(read_small(folder / "configs" / "metadata.json"))["uharmony"]
        spec = meta["spec"]
        raw = meta.get("inference") or {
            "spacing-mm": meta["spacing_mm"],
            "patch-size": meta["patch_size"],
            "preprocessing": "uharmony-1",  # a bundle exported before the settings were recorded
        }
        settings = settings_of({"extra": {"inference": raw}, "spec": spec}, folder / "configs" / "metadata.json")
        model = model_from_spec(spec)
        state = torch.load(folder / MODEL, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{folder}: not a readable uharmony bundle ({str(exc)[:300]})") from None
    return model.eval(), settings["spacing-mm"], settings["patch-size"], meta


def open_bundle(folder: str | Path, trusted: list | None = None, allow_checkpoint: bool = False, revoked=None):
    """:func:`load_bundle` after ``check_bundle`` (digests, signature by ``trusted``, release, configs) and
    the check that ``configs/inference.json`` is exactly what :func:`inference_config` writes for the
    metadata; returns (model, spacing, patch size, metadata's ``uharmony`` part, manifest or None)."""
    folder = Path(folder)
    manifest = check_bundle(folder, trusted, allow_checkpoint, revoked)
    model, spacing, roi, meta = load_bundle(folder)
    if manifest is not None:
        check_config_is_generated(folder, meta, spacing, roi)
    return model, spacing, roi, meta, manifest


def check_config_is_generated(folder: Path, meta: dict, spacing: float, roi: int) -> None:
    """BundleError unless the bundle's ``configs/inference.json`` is what ``uharmony-export`` writes for its
    metadata (only then is what MONAI will run known)."""
    path = Path(folder) / "configs" / "inference.json"
    try:
        config = json.loads(read_small(path))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from None
    calibrate = meta.get("site_statistics", "initial values") == "initial values"
    expected = inference_config(meta["spec"], spacing, roi, calibrate)
    for key in sorted(set(config) | set(expected)):
        if json.dumps(config.get(key), sort_keys=True) != json.dumps(expected.get(key), sort_keys=True):
            raise BundleError(f"{path}: {key!r} differs from what uharmony-export writes for this model")


def verify_bundle(folder: str | Path) -> None:
    """MONAI's own check of the network against the metadata's input/output format (fake data, shapes and
    dtypes), with the bundle's config parsed by MONAI's ``ConfigParser`` once its configs passed
    ``uharmony.records.bundle_trust.check_config`` (nothing but what uharmony-export writes is parsed)."""
    from monai.bundle import verify_net_in_out

    from uharmony.records.bundle_trust import check_config

    folder = Path(folder)
    for name, data_only in (("metadata.json", True), ("inference.json", False)):
        path = folder / "configs" / name
        try:
            config = json.loads(read_small(path))
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: not readable JSON ({exc})") from None
        check_config(config, f"configs/{name}", data_only=data_only)
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(folder / "configs" / "metadata.json"),
        config_file=str(folder / "configs" / "inference.json"),
        device="cpu",
        n=2,
    )


def _version(name: str) -> str:
    from importlib import metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"

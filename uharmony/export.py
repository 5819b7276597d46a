"""A model a hospital can deploy: a MONAI bundle of the federated model, with TorchScript beside it.

    configs/metadata.json    MONAI's bundle metadata: input modalities and channels, output regions, spacing,
                             patch size, and what U-Harmony keeps at each site (the harmonization statistics)
    configs/inference.json   a MONAI bundle config: the network (``uharmony.networks.model_from_spec``), the
                             preprocessing, the scan-gated sliding-window inferer, the checkpoint loader
    models/model.pt          the whole state dict (the global model, and the site's statistics when exported
                             with its state folder), read with ``weights_only=True``
    models/model.ts          TorchScript (traced): logits of a patch; a gated model takes the scan's gate
                             weights as a second input (``ScanGatedInferer`` computes them)
    docs/README.md           how to run it

MONAI's ``verify_net_in_out`` checks the network against the metadata (:func:`verify_bundle`), and the
TorchScript outputs are compared with PyTorch's on a test volume.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.inferers import Inferer
from torch import nn

from .files import atomic_write
from .gating import scan_gate, uses_scan_gate
from .networks import UHarmonyNet, model_from_spec
from .norm import UHarmonyNorm

SITE_NOTE = (
    "U-Harmony keeps each site's harmonization statistics at that site. Exported with a site's state folder, "
    "this bundle holds that site's statistics; without one, the statistics are the model's initial values and "
    "each scan is standardized with its own (calibrate on the hospital's unlabeled scans with "
    "uharmony-calibrate and export again for the best results). No site label is needed at inference: the "
    "domain-gated head decides per scan."
)


class ScanGatedInferer(Inferer):
    """Sliding-window logits for one preprocessed scan (1, C, ...), with the gate decided once for the whole
    scan (``uharmony.gating.scan_gate``) as ``uharmony-segment`` does."""

    def __init__(self, roi_size: int, overlap: float = 0.25) -> None:
        self.roi, self.overlap = int(roi_size), float(overlap)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        present = torch.ones(1, inputs.shape[1], device=inputs.device)
        weights = None
        if uses_scan_gate(network):  # one decision for the whole scan
            weights = scan_gate(network, inputs[0], present[0], self.roi, str(inputs.device)).to(inputs.device)

        def predictor(patch):
            kw = {} if weights is None else {"gate_weights": weights.expand(patch.shape[0], -1)}
            return network(patch, None, present.expand(patch.shape[0], -1), **kw)

        return sliding_window_inference(
            inputs, (self.roi,) * 3, sw_batch_size=2, overlap=self.overlap, mode="gaussian", predictor=predictor
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


def inference_config(model: UHarmonyNet, spacing: float, roi: int) -> dict:
    keys = [f"image_{m}" for m in model.modalities]
    return {
        "imports": ["$import uharmony.export", "$import uharmony.networks"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "uharmony.networks.model_from_spec", "spec": model.spec},
        "network": "$@network_def.to(@device).eval()",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "load": "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))",
        "spacing_mm": spacing,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": keys, "ensure_channel_first": True},
                {"_target_": "ConcatItemsd", "keys": keys, "name": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [spacing] * 3, "mode": "bilinear"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "inferer": {"_target_": "uharmony.export.ScanGatedInferer", "roi_size": roi},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
            ],
        },
    }


def export_bundle(model: UHarmonyNet, out: str | Path, spacing: float, roi: int, run: dict | None = None) -> dict:
    """Write the bundle of ``model`` (weights as loaded) to ``out``; returns the TorchScript check."""
    out = Path(out)
    model = model.cpu().eval()
    atomic_write(out / "configs" / "metadata.json", json.dumps(metadata(model, spacing, roi, run or {}), indent=2))
    atomic_write(out / "configs" / "inference.json", json.dumps(inference_config(model, spacing, roi), indent=2))
    atomic_write(out / "models" / "model.pt", lambda p: torch.save(model.state_dict(), p))
    check = export_torchscript(model, out / "models" / "model.ts", roi)
    readme = (
        f"# {metadata(model, spacing, roi, {})['task']}\n\n{SITE_NOTE}\n\n"
        "Run it with `uharmony-segment --model <this folder> --input CASE --out seg.nii.gz`, or load\n"
        "`configs/inference.json` with MONAI's `ConfigParser` (network_def, preprocessing, inferer).\n"
        f"`models/model.ts`: TorchScript, inputs (B, {len(model.modalities)}, {roi}, {roi}, {roi}) patches"
        + (" and the scan's (B, D) gate weights" if model.gated else "")
        + f"; outputs logits of {', '.join(model.regions)}.\n"
    )
    atomic_write(out / "docs" / "README.md", readme)
    return check


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
    with torch.no_grad():
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
    exported bundle."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "configs" / "metadata.json").read_text())["uharmony"]
        model = model_from_spec(meta["spec"])
        state = torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{folder}: not a readable uharmony bundle ({str(exc)[:300]})") from None
    return model.eval(), float(meta["spacing_mm"]), int(meta["patch_size"]), meta


def verify_bundle(folder: str | Path) -> None:
    """MONAI's own check of the network against the metadata's input/output format (fake data, shapes and
    dtypes), with the bundle's config parsed by MONAI's ``ConfigParser``."""
    from monai.bundle import verify_net_in_out

    folder = Path(folder)
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

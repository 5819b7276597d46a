"""The components a bundle's ``configs/inference.json`` names beside MONAI's own (``uharmony.records.export``).

``python -m monai.bundle run --config_file configs/inference.json --dataset_dir CASES --output_dir OUT``
runs MONAI's ``SupervisedEvaluator`` over the case folders of ``CASES`` (BraTS naming, any subset of the
model's modalities) with:

- ``case_folders``: the data list, one ``{"folder": ...}`` per case folder;
- ``ReadCaseFolderd``: reads and checks a case as ``uharmony-segment`` does (header checks, the model's
  modality order, missing modalities zero-filled) into one ``image`` (channels first);
- ``ScanGatedInferer``: the sliding window, with the gate decided once per scan (and, for a bundle without
  a site's statistics, the scan's own statistics first);
- ``RegionsToLabelsd``: region probabilities, already back on the input grid (MONAI's ``Invertd``), to
  BraTS labels that ``SaveImaged`` writes as ``<case>_seg.nii.gz``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, Transform
from torch import nn

from uharmony.data.cases import case_from_folder
from uharmony.data.reading import read_case
from uharmony.model.gating import scan_gate, uses_scan_gate
from uharmony.model.norm import UHarmonyNorm


def case_folders(folder: str | Path) -> list[dict]:
    """``{"folder": path}`` of every case folder in ``folder`` (sorted; hidden names and files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset_dir is not a folder of case folders")
    return [{"folder": str(p)} for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


class ReadCaseFolderd(Transform):
    """``{"folder": path}`` -> ``{"image": (M, X, Y, Z) MetaTensor, "case": name}``, read with the checks of
    ``uharmony.data.read_case`` (``spacing``: the model's grid, for the resampled-size check). The image's
    ``filename_or_obj`` is ``<folder>/<case>.nii.gz`` so that ``SaveImaged`` names its output after the case."""

    def __init__(self, modalities: Sequence[str], spacing: float | None = None) -> None:
        self.modalities, self.spacing = tuple(modalities), spacing

    def __call__(self, data: dict) -> dict:
        folder = Path(data["folder"])
        item = read_case(case_from_folder(folder, self.modalities), self.modalities, self.spacing)
        image = item["image"]
        image.meta["filename_or_obj"] = str(folder / f"{folder.name}.nii.gz")
        return {"image": image, "case": folder.name}


def present_channels(image: torch.Tensor) -> torch.Tensor:
    """(1, C) True for each channel with any non-zero voxel: a missing modality is all zeros (``read_case``),
    a present one is never constant (refused), so this is what ``uharmony-segment`` passes as ``present``."""
    return (image[0].flatten(1) != 0).any(1)[None]


class ScanGatedInferer(Inferer):
    """Sliding-window logits for one preprocessed scan (1, C, ...), with the gate decided once for the whole
    scan (``uharmony.model.gating.scan_gate``) as ``uharmony-segment`` does. ``calibrate``: first estimate the
    harmonization statistics on this scan alone (a bundle exported without a site's statistics)."""

    def __init__(self, roi_size: int, overlap: float = 0.25, calibrate: bool = False) -> None:
        self.roi, self.overlap, self.calibrate = int(roi_size), float(overlap), bool(calibrate)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        from uharmony.model.inference import estimate_site_statistics

        present = present_channels(torch.as_tensor(inputs))
        if self.calibrate and any(isinstance(m, UHarmonyNorm) for m in network.modules()):
            estimate_site_statistics(
                network, [(torch.as_tensor(inputs[0]), present[0])], self.roi, device=str(inputs.device)
            )
            network.eval()
        weights = None
        if uses_scan_gate(network):  # one decision for the whole scan
            weights = scan_gate(network, inputs[0], present[0], self.roi, str(inputs.device)).to(inputs.device)

        def predictor(patch):
            kw = {} if weights is None else {"gate_weights": weights.expand(patch.shape[0], -1)}
            return network(patch, None, present.expand(patch.shape[0], -1), **kw)

        return sliding_window_inference(
            inputs, (self.roi,) * 3, sw_batch_size=2, overlap=self.overlap, mode="gaussian", predictor=predictor
        )


class RegionsToLabelsd(MapTransform):
    """(R, ...) region probabilities -> (1, ...) uint8 BraTS labels (``uharmony.model.inference.regions_to_brats``:
    1 necrotic core, 2 oedema, 4 enhancing, 3 resection cavity), keeping the image's metadata."""

    def __init__(self, keys, regions: Sequence[str]) -> None:
        super().__init__(keys)
        self.regions = list(regions)

    def __call__(self, data: dict) -> dict:
        from uharmony.model.inference import regions_to_brats

        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            labels = regions_to_brats(torch.as_tensor(pred), self.regions)[None]
            out = MetaTensor(labels)
            if isinstance(pred, MetaTensor):
                out.copy_meta_from(pred, copy_attr=False)
            d[key] = out
        return d

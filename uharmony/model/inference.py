"""Inference on whole scans without Flower: site calibration and dataset-free segmentation.

Calibration runs the network in training mode without gradients over a site's unlabeled, preprocessed
scans, which updates only the UHarmonyNorm harmonization statistics (the head's prototypes change only
when a domain id is given, and here none is). Weights are untouched.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import SlidingWindowSplitter

from uharmony.model.norm import UHarmonyNorm
from uharmony.model.training import predict
from uharmony.vocabulary import REGIONS as DEFAULT_REGIONS


@torch.no_grad()
def estimate_site_statistics(
    model: torch.nn.Module,
    images: list[tuple[torch.Tensor, torch.Tensor]],
    roi: int,
    passes: int = 2,
    device: str = "cpu",
) -> int:
    """Estimate the site statistics from ``(image (C, ...), present (C,))`` pairs; returns the updates made.

    Each pass visits every scan with non-overlapping ``roi``-sized windows (zero-padded at the far
    edges; all-zero windows skipped), as training would.
    """
    norms = [m for m in model.modules() if isinstance(m, UHarmonyNorm)]
    if not norms:
        raise ValueError("calibrate: the model has no UHarmonyNorm layer (norm must be 'uharmony')")
    if not images:
        raise ValueError("calibrate: no scan given")
    for m in norms:  # start the site's running averages afresh
        m.site_mean.zero_()
        m.site_std.fill_(1.0)
        m.num_updates.zero_()
    model.to(device)
    was_training = model.training
    model.train()
    windows = SlidingWindowSplitter(roi, overlap=0, filter_fn=lambda patch, location: bool(patch.any()))
    for _ in range(passes):
        for image, present in images:
            pres = torch.as_tensor(present).view(1, -1).to(device)
            for patch, _ in windows(torch.as_tensor(image).unsqueeze(0).to(device)):
                model(patch, domain=None, present=pres)
    model.train(was_training)
    return int(norms[0].num_updates)


RC_LABEL = 3  # resection cavity in our output maps (BraTS 2021 labels leave 3 unused)


def regions_to_brats(regions: torch.Tensor, names=DEFAULT_REGIONS) -> torch.Tensor:
    """(R, ...) region probabilities -> labels: 1 necrotic core, 2 oedema, 4 enhancing (BraTS 2021), and
    3 resection cavity when the model has an ``RC`` output (a class added by a joining site).

    ET within TC within WT is enforced; tumour labels take precedence over the cavity.
    """
    names = list(names)
    if len(names) != regions.shape[0] or not set(DEFAULT_REGIONS) <= set(names):
        raise ValueError(f"regions_to_brats: need ET, TC and WT among the {regions.shape[0]} outputs, got {names}")
    on = regions > 0.5
    et, tc, wt = (on[names.index(r)] for r in DEFAULT_REGIONS)
    tc, wt = tc | et, wt | tc | et  # enforce the nesting ET within TC within WT
    out = torch.zeros(regions.shape[1:], dtype=torch.uint8)
    if "RC" in names:
        out[on[names.index("RC")]] = RC_LABEL
    out[wt] = 2
    out[tc] = 1
    out[et] = 4
    return out


def label_volumes(labels, voxel_ml: float, names=DEFAULT_REGIONS) -> dict[str, float]:
    """Volume in mL of each output region, read back from a label map of :func:`regions_to_brats`."""
    labels = np.asarray(labels)
    masks = {
        "ET": labels == 4,
        "TC": np.isin(labels, (1, 4)),
        "WT": np.isin(labels, (1, 2, 4)),
        "RC": labels == RC_LABEL,
    }
    return {r: round(float(masks[r].sum()) * voxel_ml, 2) for r in names if r in masks}


def segment(model, image: torch.Tensor, present: torch.Tensor, roi: int, device: str = "cpu") -> torch.Tensor:
    """Dataset-free (gated) region probabilities (R, ...) for one preprocessed case."""
    return predict(model, image, present, None, roi, device=device)[0].cpu()

"""Evaluation regions ET / TC / WT and the label mapping of every supported dataset.

| dataset            | labels                                          | ET  | TC        | WT            |
|--------------------|-------------------------------------------------|-----|-----------|---------------|
| BraTS 2021 / FeTS  | 1 NCR/NET, 2 ED, 4 ET                           | 4   | 1, 4      | 1, 2, 4       |
| BraTS 2023+        | 1 NCR, 2 ED (SNFH), 3 ET                        | 3   | 1, 3      | 1, 2, 3       |
| MSD Task01         | 1 oedema, 2 non-enhancing tumour, 3 enhancing   | 3   | 2, 3      | 1, 2, 3       |
| synthetic (full)   | as BraTS 2021                                   | 4   | 1, 4      | 1, 2, 4       |
| synthetic (wt)     | 2 = whole tumour; only WT is annotated          | -   | -         | 2             |
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform

REGIONS = ("ET", "TC", "WT")
LABEL_MAPS: dict[str, dict] = {
    "brats2021": dict(values=(0, 1, 2, 4), regions={"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}),
    "brats2023": dict(values=(0, 1, 2, 3), regions={"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}),
    "msd": dict(values=(0, 1, 2, 3), regions={"ET": (3,), "TC": (2, 3), "WT": (1, 2, 3)}),
    "wt": dict(values=(0, 2), regions={"WT": (2,)}),
}


def annotated_regions(label_map: str) -> tuple[bool, ...]:
    """Which of ET/TC/WT a labelling protocol annotates."""
    return tuple(r in LABEL_MAPS[label_map]["regions"] for r in REGIONS)


def labels_to_regions(label: np.ndarray | torch.Tensor, label_map: str) -> torch.Tensor:
    """(1, *spatial) label map -> (3, *spatial) float region masks in the order ET, TC, WT.

    Regions the protocol does not annotate are all-zero (and must be masked out of loss and metrics).
    """
    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    lab = lab[0] if lab.dim() == 4 else lab
    regions = LABEL_MAPS[label_map]["regions"]
    out = torch.zeros((len(REGIONS),) + tuple(lab.shape), dtype=torch.float32)
    for i, name in enumerate(REGIONS):
        for v in regions.get(name, ()):
            out[i] = torch.maximum(out[i], (lab == v).float())
    return out


class LabelToRegionsd(MapTransform):
    """MONAI dictionary transform: ``label`` (1, *spatial) -> (3, *spatial) ET/TC/WT masks."""

    def __init__(self, keys="label", label_map_key: str = "protocol") -> None:
        super().__init__(keys)
        self.label_map_key = label_map_key

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            regions = labels_to_regions(d[key], d[self.label_map_key])
            if hasattr(d[key], "copy_meta_from"):
                from monai.data import MetaTensor

                regions = MetaTensor(regions, meta=d[key].meta)
            d[key] = regions
        return d

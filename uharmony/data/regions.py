"""Output regions and the label mapping of every supported dataset.

A model's outputs are independent sigmoid channels, one per *region*; the default regions are the
BraTS evaluation regions ET, TC and WT. A federation can grow new regions (e.g. the resection cavity
RC of post-operative scans, see ``uharmony.model.adaptation``), so every function here takes the region
order of the model it prepares data for.

| dataset / protocol | labels                                          | ET  | TC        | WT            | RC |
|--------------------|-------------------------------------------------|-----|-----------|---------------|----|
| BraTS 2021 / FeTS  | 1 NCR/NET, 2 ED, 4 ET                           | 4   | 1, 4      | 1, 2, 4       | -  |
| BraTS 2023+        | 1 NCR, 2 ED (SNFH), 3 ET                        | 3   | 1, 3      | 1, 2, 3       | -  |
| BraTS 2024 post-op | 1 NETC, 2 SNFH, 3 ET, 4 RC (resection cavity)   | 3   | 1, 3      | 1, 2, 3       | 4  |
| MSD Task01         | 1 oedema, 2 non-enhancing tumour, 3 enhancing   | 3   | 2, 3      | 1, 2, 3       | -  |
| BraTS-PEDs 2023    | 1 ET, 2 NET, 3 CC (cyst), 4 ED; NET region: 2   | 1   | 1, 2, 3   | 1, 2, 3, 4    | -  |
| synthetic (full)   | as BraTS 2021                                   | 4   | 1, 4      | 1, 2, 4       | -  |
| synthetic (wt)     | 2 = whole tumour; only WT is annotated          | -   | -         | 2             | -  |
| none (label-free)  | no label file; nothing is annotated             | -   | -         | -             | -  |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from uharmony.checks import one_of
from uharmony.vocabulary import REGIONS

if TYPE_CHECKING:  # the tables are read without torch (a site's cases, a manifest); the masks bring it
    import numpy as np
    import torch

LABEL_MAPS: dict[str, dict] = {
    "brats2021": dict(values=(0, 1, 2, 4), regions={"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}),
    "brats2023": dict(values=(0, 1, 2, 3), regions={"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}),
    "brats2024": dict(values=(0, 1, 2, 3, 4), regions={"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "RC": (4,)}),
    "msd": dict(values=(0, 1, 2, 3), regions={"ET": (3,), "TC": (2, 3), "WT": (1, 2, 3)}),
    # paediatric (BraTS-PEDs 2023): the non-enhancing tumour is a class, and a region, of its own
    "brats-peds": dict(values=(0, 1, 2, 3, 4), regions={"ET": (1,), "TC": (1, 2, 3), "WT": (1, 2, 3, 4), "NET": (2,)}),
    "wt": dict(values=(0, 2), regions={"WT": (2,)}),
    "none": dict(values=(0,), regions={}),  # a label-free site (UMS-Rep phase P): scans only, no annotation
}


def check_label_map(label_map: str, where: str = "label map") -> str:
    return one_of(f"{where}: labelling protocol", label_map, LABEL_MAPS)


def protocol_regions(label_map: str) -> tuple[str, ...]:
    """The regions a labelling protocol annotates, in its own order."""
    return tuple(LABEL_MAPS[check_label_map(label_map)]["regions"])


def annotated_regions(label_map: str, regions: Sequence[str] = REGIONS) -> tuple[bool, ...]:
    """For each of ``regions``: does this labelling protocol annotate it?"""
    return tuple(r in LABEL_MAPS[check_label_map(label_map)]["regions"] for r in regions)


def labels_to_regions(
    label: np.ndarray | torch.Tensor, label_map: str, regions: Sequence[str] = REGIONS
) -> torch.Tensor:
    """(1, *spatial) label map -> (len(regions), *spatial) float region masks in the order ``regions``.

    Regions the protocol does not annotate are all-zero (and must be masked out of loss and metrics).
    The pipeline's transform is ``uharmony.data.pipeline.LabelToRegionsd``.
    """
    import numpy as np
    import torch

    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    lab = lab[0] if lab.dim() == 4 else lab
    mapping = LABEL_MAPS[check_label_map(label_map)]["regions"]
    out = torch.zeros((len(regions),) + tuple(lab.shape), dtype=torch.float32)
    for i, name in enumerate(regions):
        for v in mapping.get(name, ()):
            out[i] = torch.maximum(out[i], (lab == v).float())
    return out

"""Lesion-wise Dice (Flower-free), after the BraTS 2023 metastasis challenge's rules.

Each ground-truth lesion (a 26-connected component of the region) is matched with every predicted component
that overlaps it once dilated by one voxel; its Dice is taken between the lesion and those components. A
predicted component that meets no lesion is a false positive and scores 0. The case's lesion-wise Dice is the
sum of the lesions' Dice over (lesions + false positives): one missed or spurious small lesion costs as much
as a large one. Unlike the challenge we drop no small component (its 10-voxel floor is at 1 mm; at 3 mm one
voxel is 27 mm3). A case with neither lesions nor prediction scores 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CONNECTIVITY = np.ones((3, 3, 3), bool)


def lesionwise_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Lesion-wise Dice of two boolean 3-D masks of the same shape."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"lesionwise_dice: two 3-D masks of one shape expected, got {pred.shape} and {truth.shape}")
    lesions, n_lesions = ndimage.label(truth, _CONNECTIVITY)
    components, n_components = ndimage.label(pred, _CONNECTIVITY)
    if n_lesions == 0:
        return 1.0 if n_components == 0 else 0.0
    matched = np.zeros(n_components + 1, bool)
    total = 0.0
    for k, box in enumerate(ndimage.find_objects(lesions), start=1):
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        lesion = lesions[grown] == k
        near = np.unique(components[grown][ndimage.binary_dilation(lesion, _CONNECTIVITY)])
        near = near[near > 0]
        matched[near] = True
        if near.size == 0:
            continue
        hit = np.isin(components, near)
        whole = lesions == k
        total += 2.0 * float((hit & whole).sum()) / float(hit.sum() + whole.sum())
    false_positives = int((~matched[1:]).sum())
    return total / (n_lesions + false_positives)

import numpy as np
import pytest
import torch

from uharmony.model.lesionwise import lesionwise_dice
from uharmony.model.training import case_record


def _mask(*boxes, shape=(20, 20, 20)):
    m = np.zeros(shape, bool)
    for x, y, z, s in boxes:
        m[x : x + s, y : y + s, z : z + s] = True
    return m


def test_each_lesion_counts_once_whatever_its_size():
    big, small = (2, 2, 2, 6), (14, 14, 14, 2)
    truth = _mask(big, small)
    assert lesionwise_dice(truth, truth) == 1.0
    # the small lesion missed: half the lesions, although nearly all voxels are found (voxel Dice ~0.98)
    assert lesionwise_dice(_mask(big), truth) == pytest.approx(0.5)
    # a spurious component is a lesion scoring 0
    assert lesionwise_dice(_mask(big, small, (2, 14, 2, 2)), truth) == pytest.approx(2 / 3)


def test_a_component_touching_a_dilated_lesion_is_matched_and_empty_cases():
    truth = _mask((5, 5, 5, 4))
    shifted = _mask((9, 5, 5, 2))  # adjacent, no overlap: matched through the one-voxel dilation, Dice 0
    assert lesionwise_dice(shifted, truth) == 0.0
    empty = np.zeros((20, 20, 20), bool)
    assert lesionwise_dice(empty, empty) == 1.0 and lesionwise_dice(truth, empty) == 0.0
    with pytest.raises(ValueError, match="3-D masks"):
        lesionwise_dice(empty[0], empty)


def test_case_record_keeps_truth_sizes_for_empty_region_rules():
    pred = torch.zeros(2, 8, 8, 8)
    truth = torch.zeros(2, 8, 8, 8)
    truth[1, 2:4, 2:4, 2:4] = 1
    pred[1, 2:4, 2:4, 2:4] = 1
    rec = case_record("c", ["ET", "WT"], torch.tensor([1.0, 1.0]), pred, truth, torch.tensor([True, True]))
    assert rec == {
        "case": "c",
        "dice-et": 1.0,
        "truth-et": 0,
        "lesion-et": 1.0,
        "dice-wt": 1.0,
        "truth-wt": 8,
        "lesion-wt": 1.0,
    }
    rec = case_record("c", ["ET", "WT"], torch.tensor([float("nan"), 1.0]), pred, truth, torch.tensor([False, True]))
    assert rec["dice-et"] is None and rec["truth-et"] is None and rec["lesion-et"] is None

"""Derivable outputs (UMS-Rep's third step): computed from trained heads at the hospital, no training.

- :func:`tta_uncertainty`: test-time augmentation by left-right / front-back / up-down flips; the voxel-wise
  standard deviation of the region probabilities and the agreement of the members' whole-tumour masks
  (mean Dice of each member to their consensus).
- :func:`grad_cam`: a Grad-CAM map of the presence head's logit for a region (MONAI's ``GradCAM`` on the
  backbone's bottleneck activations as the head receives them), upsampled to the scan and scaled to [0, 1].
  A head that reads every encoder scale (``presence-pool = "multiscale"``, the default) also reads the finer
  scales, which this map leaves out: it shows where the bottleneck's share of the logit comes from.
- :func:`review`: "review recommended" when the flips disagree, the probabilities are unsure inside the
  lesion, or the presence head and the segmentation contradict each other. The thresholds are ours
  (documented in docs/umsrep.md), not the paper's: it shows its derivable outputs as figures only.
"""

from __future__ import annotations

import torch
from monai.visualize import GradCAM
from torch import nn

from uharmony.model.inference import segment
from uharmony.model.task_heads import forward_tasks

FLIPS = ((), (1,), (2,), (3,))  # spatial axes of a (C, X, Y, Z) scan
MIN_AGREEMENT = 0.8  # members' WT Dice to their consensus below this: review
MAX_LESION_STD = 0.2  # mean probability SD inside the consensus lesion above this: review


def _wt(model) -> int:
    regions = list(model.regions)
    return regions.index("WT") if "WT" in regions else len(regions) - 1


def tta_uncertainty(model, image: torch.Tensor, present: torch.Tensor, roi: int, device="cpu") -> dict:
    """``{"plain": (R, ...) unflipped, "probability": mean, "std", "agreement": float, "lesion_std": float}``."""
    members = []
    for axes in FLIPS:
        flipped = torch.flip(image, axes) if axes else image
        prob = segment(model, flipped, present, roi, device)
        members.append(torch.flip(prob, axes) if axes else prob)
    stack = torch.stack(members)
    mean, std = stack.mean(0), stack.std(0)
    wt = _wt(model)
    consensus = mean[wt] > 0.5
    dices = []
    for m in members:
        mask = m[wt] > 0.5
        total = int(mask.sum() + consensus.sum())
        dices.append(1.0 if total == 0 else 2.0 * float((mask & consensus).sum()) / total)
    lesion_std = float(std[wt][consensus].mean()) if bool(consensus.any()) else 0.0
    return {
        "plain": members[0],
        "probability": mean,
        "std": std,
        "agreement": sum(dices) / len(dices),
        "lesion_std": lesion_std,
    }


class _PresenceLogits(nn.Module):
    """The presence head's logits as a classifier MONAI's Grad-CAM can hook."""

    def __init__(self, model, present: torch.Tensor) -> None:
        super().__init__()
        self.model, self.present = model, present

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_tasks(self.model, x, self.present.expand(x.shape[0], -1), want=("presence",))["presence"]


def presence_probability(model, image: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(R,) probability that each region is in the scan, from the presence head on the whole scan."""
    with torch.no_grad():
        logits = _PresenceLogits(model.eval(), present.view(1, -1))(_padded(image).unsqueeze(0))
    return torch.sigmoid(logits[0])


def _padded(image: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    pads = []
    for n in reversed(image.shape[1:]):
        pads += [0, (-n) % multiple]
    return torch.nn.functional.pad(image, pads)


def grad_cam(model, image: torch.Tensor, present: torch.Tensor, region: str | None = None) -> torch.Tensor:
    """(X, Y, Z) Grad-CAM of the presence logit of ``region`` (default WT) over the scan, in [0, 1]."""
    if "presence" not in model.tasks:
        raise ValueError("grad_cam: the model has no presence head (train it with tasks = 'presence')")
    wrapper = _PresenceLogits(model.eval(), present.view(1, -1))
    target = model.tasks["presence"].tap  # the bottleneck's activations, on the path to the presence logit
    layer = next(name for name, m in wrapper.named_modules() if m is target)
    idx = list(model.regions).index(region) if region else _wt(model)
    x = _padded(image).unsqueeze(0)
    with torch.enable_grad():
        cam = GradCAM(wrapper, target_layers=layer)(x, class_idx=idx)
    spatial = image.shape[1:]
    return cam[0, 0, : spatial[0], : spatial[1], : spatial[2]].detach()


def review(tta: dict, presence: torch.Tensor | None, model) -> tuple[bool, list[str]]:
    """(review recommended?, reasons)."""
    reasons = []
    if tta["agreement"] < MIN_AGREEMENT:
        reasons.append(f"flipped inputs disagree (WT agreement {tta['agreement']:.2f} < {MIN_AGREEMENT})")
    if tta["lesion_std"] > MAX_LESION_STD:
        reasons.append(f"unsure inside the lesion (mean probability SD {tta['lesion_std']:.2f} > {MAX_LESION_STD})")
    if presence is not None:
        wt = _wt(model)
        says, found = bool(presence[wt] > 0.5), bool((tta["probability"][wt] > 0.5).any())
        if says != found:
            reasons.append(
                f"presence head says WT {'present' if says else 'absent'} (p={float(presence[wt]):.2f}) but the "
                f"segmentation {'is empty' if not found else 'finds a lesion'}"
            )
    return bool(reasons), reasons

"""UMS-Rep's scan-level second task: the tumour type (docs/method.md, "UMS-Rep's second task").

A case's type comes from the data (``uharmony.data.case_types``: the manifest's ``"type"``, a hospital's
``types.csv``); ``SiteData`` gives each item its index among the run's ``tumour-types`` (-1: none or another).
The head (``uharmony.model.task_heads.TypeHead``) reads patches: a patch teaches the type only where it holds
tumour and its case has a type, so the loss is softmax cross-entropy over those patches alone. A scan's answer
is the mean of its tumour patches' probabilities (the probe's case-level reading, ``simulation.umsrep_bench.
type_probe``); at a site it is scored on its validation scans with a type: accuracy, and the number scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TASK = "tumour-type"


def type_mask(types: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(B,) true where the patch holds tumour (any region) and its case has a type among the run's."""
    return (types.reshape(-1) >= 0) & (label.flatten(1) > 0.5).any(1)


def type_loss(logits: torch.Tensor, types: torch.Tensor, label: torch.Tensor) -> torch.Tensor | None:
    """Cross-entropy over the patches that teach the type (:func:`type_mask`); None where none does."""
    mask = type_mask(types.to(logits.device), label)
    if not bool(mask.any()):
        return None
    return F.cross_entropy(logits[mask].float(), types.reshape(-1).to(logits.device)[mask].long())


@torch.no_grad()
def type_accuracy(model, items: list[dict], roi: int, seed: int, per_case: int = 4, device="cpu") -> dict:
    """Each validation scan with a type: ``per_case`` patches centred on its tumour (drawn from ``seed``), the
    mean of their softmax, the highest one's type against the scan's. ``type-accuracy`` (nan without a typed
    scan) and ``type-cases`` (how many were scored)."""
    from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

    from uharmony.model.task_heads import forward_tasks

    model.to(device).eval()
    pad = SpatialPadd(keys=["image", "label"], spatial_size=(roi,) * 3)
    crop = RandCropByPosNegLabeld(
        keys=["image", "label"], label_key="label", spatial_size=(roi,) * 3, pos=1, neg=0, num_samples=per_case
    )
    crop.set_random_state(seed=seed % (2**32))
    right = scored = 0
    for item in items:
        kind = int(item.get("tumour_type", -1))
        if kind < 0 or not bool((torch.as_tensor(item["label"]) > 0.5).any()):
            continue
        patches = crop(pad({"image": item["image"], "label": item["label"]}))
        x = torch.stack([torch.as_tensor(p["image"]) for p in patches]).to(device)
        present = torch.as_tensor(item["present"]).view(1, -1).expand(len(patches), -1).to(device)
        probs = forward_tasks(model, x, present, want=(TASK,))[TASK].float().softmax(1).mean(0)
        right += int(int(probs.argmax()) == kind)
        scored += 1
    return {"type-accuracy": right / scored if scored else float("nan"), "type-cases": scored}

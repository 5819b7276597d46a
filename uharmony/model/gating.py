"""Scan-level gating (Flower-free): a scan's descriptor, the domains' prototypes, the gate's decision.

The ``scan`` gate of :class:`uharmony.model.head.DomainGatedHead` decides once per scan which domain expert(s)
to use. A scan's descriptor is the mean, over the scan's fullest non-empty windows (of the grid training and
calibration visit), of the globally pooled features that enter the head, computed in evaluation mode,
i.e. with the site's harmonization statistics; then, when the head has one, the scan's acquisition
fingerprint (``uharmony.model.fingerprint``: what z-scoring leaves of the scanner, which harmonized features are
built to ignore). A domain's prototype is the mean and variance of the
descriptors of its sites' training scans under the model the site received this round; no label is used.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from monai.inferers import SlidingWindowSplitter

from uharmony.model.fingerprint import acquisition_fingerprint
from uharmony.model.head import DomainGatedHead


def uses_scan_gate(model) -> bool:
    head = getattr(model, "head", None)
    return isinstance(head, DomainGatedHead) and head.gate_kind == "scan"


MAX_WINDOWS = 8  # the descriptor's windows per scan: those with the most non-zero voxels


@torch.no_grad()
def scan_descriptor(
    model, image: torch.Tensor, present: torch.Tensor, roi: int, device: str = "cpu", max_windows: int = MAX_WINDOWS
) -> torch.Tensor:
    """(C [+ F],) mean pooled head-input features over the scan's ``max_windows`` fullest ``roi`` windows of a
    non-overlapping grid (eval mode; a whole-scan pass would cost as much as ~3 training steps per window),
    then the acquisition fingerprint if the head's descriptor has one."""
    was_training = model.training
    model.to(device).eval()
    pres = torch.as_tensor(present).view(1, -1)
    windows = SlidingWindowSplitter(roi, overlap=0, filter_fn=lambda patch, location: bool(patch.any()))
    patches = [patch for patch, _ in windows(torch.as_tensor(image).unsqueeze(0))]
    if not patches:
        model.train(was_training)
        raise ValueError("scan_descriptor: the scan has no non-empty window")
    fill = torch.tensor([float((p != 0).sum()) for p in patches])
    chosen = [patches[i] for i in fill.argsort(descending=True, stable=True)[:max_windows].tolist()]
    pooled = []
    for i in range(0, len(chosen), 2):  # two windows per forward, as in sliding-window inference
        batch = torch.cat(chosen[i : i + 2]).to(device)
        pooled.append(model.features(batch, pres.to(device).expand(len(batch), -1)).flatten(2).mean(-1))
    model.train(was_training)
    features = torch.cat(pooled).mean(0).cpu()
    if getattr(model.head, "fingerprint", 0):
        return torch.cat([features, acquisition_fingerprint(image, present).to(features.dtype)])
    return features


def scan_descriptors(model, items: Iterable[dict], roi: int, device: str = "cpu") -> torch.Tensor:
    """(N, C) descriptors of preprocessed cases (dicts with ``image`` and ``present``)."""
    rows = [scan_descriptor(model, it["image"], it["present"], roi, device) for it in items]
    if not rows:
        raise ValueError("scan_descriptors: no case given")
    return torch.stack(rows)


MAX_SCANS = 16  # scans per domain a prototype is computed from (evenly spread over the site's list)


@torch.no_grad()
def set_prototypes(
    model, items: list[dict], domains: Iterable[int], roi: int, device: str = "cpu", max_scans: int = MAX_SCANS
) -> dict[int, int]:
    """Set each domain's prototype from (up to ``max_scans``) cases of that domain (``domains``, aligned with
    ``items``). Returns {domain: number of scans used}. Only the ``scan`` gate has prototypes set this way.
    """
    if not uses_scan_gate(model):
        return {}
    domains = [int(d) for d in domains]
    used = {}
    for d in sorted(set(domains)):
        rows = [i for i, di in enumerate(domains) if di == d]
        rows = [rows[int(j)] for j in torch.linspace(0, len(rows) - 1, min(max_scans, len(rows))).round().long()]
        model.head.experts[d].set_prototype(scan_descriptors(model, [items[i] for i in rows], roi, device))
        used[d] = len(rows)
    return used


@torch.no_grad()
def scan_gate(model, image: torch.Tensor, present: torch.Tensor, roi: int, device: str = "cpu") -> torch.Tensor:
    """(1, D) mixing weights of a dataset-free prediction for one scan (see ``DomainGatedHead.gate``)."""
    return model.head.gate(scan_descriptor(model, image, present, roi, device).unsqueeze(0))


def merge_prototypes(parts: list[tuple[torch.Tensor, torch.Tensor, float]]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One domain's prototype from its sites' (mean, variance, scans): the pooled mean and the pooled
    variance (within-site variance plus the spread of the site means), as if computed over all the scans."""
    total = float(sum(n for _, _, n in parts))
    if total <= 0:
        raise ValueError("merge_prototypes: no scan")
    mean = sum(m.double() * n for m, _, n in parts) / total
    var = sum((v.double() + (m.double() - mean).pow(2)) * n for m, v, n in parts) / total
    return mean.to(parts[0][0].dtype), var.to(parts[0][1].dtype), total


def gate_decisions(model, items: list[dict], domain: int, roi: int, device: str = "cpu") -> tuple[list, dict]:
    """For the validation scans of a site of ``domain``: (each scan's (1, D) gate weights, {"gate-accuracy":
    fraction whose most probable domain is ``domain``, "gate-weight": mean probability of ``domain``,
    "gate-unseen": fraction beyond every domain's reach})."""
    descriptors = scan_descriptors(model, items, roi, device)
    probs = model.head.gate_probs(descriptors)
    weights = model.head.gate(descriptors)
    summary = {
        "gate-accuracy": float((probs.argmax(1) == domain).float().mean()),
        "gate-weight": float(probs[:, domain].mean()),
        "gate-unseen": float(model.head.beyond_reach(descriptors).float().mean()),
    }
    return [w.unsqueeze(0) for w in weights], summary

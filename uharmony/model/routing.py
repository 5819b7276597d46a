"""Routing a scan to the nearest training site by its acquisition fingerprint (Flower-free).

The dataset-free protocol of the benchmark gives methods whose site-specific parts have no gate of their own
(FedBN's normalization layers, local models) the same information U-Harmony's scan gate uses: each training
site's prototype of ``uharmony.model.fingerprint`` (mean and variance over up to 16 of its training scans, computed
at the site, no label), and a scan goes to the site nearest under the sites' pooled within-site variance
(the diagonal Mahalanobis distance of ``head.distance2``). Two sites with near-identical scanners cannot be
told apart this way, by design.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch

from uharmony.model.fingerprint import acquisition_fingerprint
from uharmony.model.gating import MAX_SCANS
from uharmony.model.head import distance2


class FingerprintRouter:
    """Nearest-prototype routing over sites (keys: whatever names the sites)."""

    def __init__(self, prototypes: dict[Hashable, tuple[torch.Tensor, torch.Tensor]]) -> None:
        if not prototypes:
            raise ValueError("FingerprintRouter: no site prototype")
        self.keys = list(prototypes)
        self.means = torch.stack([prototypes[k][0].double() for k in self.keys])
        self.spread = torch.stack([prototypes[k][1].double() for k in self.keys]).mean(0)

    @classmethod
    def fit(cls, scans: dict[Hashable, Iterable[dict]], max_scans: int = MAX_SCANS) -> FingerprintRouter:
        """From each site's preprocessed training cases (dicts with ``image`` and ``present``), evenly spread
        over its list, at most ``max_scans`` each."""
        prototypes = {}
        for key, items in scans.items():
            items = list(items)
            if not items:
                continue
            picks = torch.linspace(0, len(items) - 1, min(max_scans, len(items))).round().long().tolist()
            rows = torch.stack([fingerprint(items[i]) for i in picks])
            prototypes[key] = (
                rows.mean(0),
                rows.var(0, unbiased=False) if len(rows) > 1 else torch.zeros_like(rows[0]),
            )
        return cls(prototypes)

    def route(self, item: dict) -> Hashable:
        """The key of the site whose prototype is nearest to this case's fingerprint."""
        d = distance2(fingerprint(item).double().unsqueeze(0), self.means, self.spread)
        return self.keys[int(d.argmin())]


def fingerprint(item: dict) -> torch.Tensor:
    return acquisition_fingerprint(item["image"], item.get("present"))

"""Universal modality / class / domain adaptation of a trained UHarmonyNet.

Each function extends the model in place and updates ``model.spec`` so checkpoints can be rebuilt.
Guarantees (tested): inputs without the new modality give exactly the same outputs as before; the old
output channels are exactly unchanged after adding classes (region outputs are independent sigmoids);
the old domains' oracle outputs are unchanged after adding a domain.
"""

from __future__ import annotations

from .head import DomainGatedHead
from .networks import UHarmonyNet


def _check(model) -> UHarmonyNet:
    if not isinstance(model, UHarmonyNet):
        raise ValueError(f"expected a UHarmonyNet from uharmony.build_model, got {type(model).__name__}")
    return model


def add_modality(model: UHarmonyNet, name: str) -> int:
    """Add an input modality (new stem initialized as the mean of the others); returns its channel index."""
    _check(model).stems.add_modality(name)
    model.spec["modalities"] = model.modalities
    model.spec["in_channels"] = len(model.modalities)
    return len(model.modalities) - 1


def add_classes(model: UHarmonyNet, n: int = 1) -> list[int]:
    """Add ``n`` output channels (zero weights, strongly negative bias); returns their indices."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"add_classes: n must be a positive int, got {n!r}")
    _check(model)
    if not isinstance(model.head, DomainGatedHead):
        raise ValueError("add_classes: only models with head='gated' can be extended")
    old = model.head.out_channels
    model.head.add_output_channels(n)
    model.spec["out_channels"] = model.head.out_channels
    return list(range(old, old + n))


def add_domain(model: UHarmonyNet) -> int:
    """Add a domain expert + prototype slot to the gated head; returns the new domain id."""
    _check(model)
    if not isinstance(model.head, DomainGatedHead):
        raise ValueError("add_domain: only models with head='gated' have domains")
    d = model.head.add_domain()
    model.spec["num_domains"] = model.head.num_domains
    return d

"""Universal modality / class / domain adaptation of a trained UHarmonyNet.

Each function extends the model in place and updates ``model.spec`` so checkpoints can be rebuilt.
Guarantees (tested): inputs without the new modality give exactly the same outputs as before; the old
output channels are unchanged after adding classes up to float rounding (region outputs are
independent sigmoids); the old domains' oracle outputs, and the gated outputs until the new domain has
a prototype, are unchanged after adding a domain.

:func:`extend_model` is what a federation server calls when a site joins: it adds whatever the site
brings that the model lacks, and reports what it added.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from uharmony.model.fingerprint import fingerprint_size
from uharmony.model.head import DomainGatedHead
from uharmony.model.networks import UHarmonyNet


def _check(model) -> UHarmonyNet:
    if not isinstance(model, UHarmonyNet):
        raise ValueError(f"expected a UHarmonyNet from uharmony.build_model, got {type(model).__name__}")
    return model


def add_modality(model: UHarmonyNet, name: str) -> int:
    """Add an input modality (new stem initialized as the mean of the others); returns its channel index."""
    _check(model).stems.add_modality(name)
    if "recon" in model.tasks:  # the denoising head reconstructs every input modality
        model.tasks["recon"].add_output_channels(1)
    model.spec["modalities"] = model.modalities
    model.spec["in_channels"] = len(model.modalities)
    if isinstance(model.head, DomainGatedHead):  # the fingerprint has slots per modality: prototypes padded
        model.head.resize_fingerprint(fingerprint_size(len(model.modalities), model.head.spatial_dims))
    return len(model.modalities) - 1


def add_classes(model: UHarmonyNet, names: int | Sequence[str] = 1) -> list[int]:
    """Add output channels, named by ``names`` (or ``n`` unnamed ones); returns their indices.

    New channels start with zero weights and a strongly negative bias ("absent everywhere") in every
    expert of a gated head, or in the plain head.
    """
    _check(model)
    old = model.spec["out_channels"]
    if isinstance(names, int):
        if names < 1:
            raise ValueError(f"add_classes: n must be a positive int, got {names!r}")
        names = [f"c{old + i}" for i in range(names)]
    names = [str(n) for n in names]
    clash = [n for n in names if n in model.regions] or ([n for n in names if names.count(n) > 1])
    if not names or clash:
        raise ValueError(f"add_classes: need new, distinct region names; {clash or names} clash with {model.regions}")
    model.head.add_output_channels(len(names))
    if "presence" in model.tasks:
        model.tasks["presence"].add_output_channels(len(names))
    model.spec["out_channels"] = old + len(names)
    model.spec["regions"] = model.regions + names
    _sync_experts(model)
    return list(range(old, old + len(names)))


def _sync_experts(model: UHarmonyNet) -> None:
    """Record in the spec which regions each expert knows (omitted while every expert knows every region)."""
    if not isinstance(model.head, DomainGatedHead) or bool(model.head.knows.all()):
        model.spec.pop("expert_regions", None)
        return
    model.spec["expert_regions"] = [[r for r, k in zip(model.regions, row) if k] for row in model.head.knows.tolist()]


def set_expert_regions(model: UHarmonyNet, domain: int, regions: Sequence[str]) -> None:
    """Declare the output regions domain ``domain``'s expert is trained on (its sites' protocol)."""
    _check(model)
    if not isinstance(model.head, DomainGatedHead) or not 0 <= domain < model.head.num_domains:
        raise ValueError(f"set_expert_regions: no expert for domain {domain!r}")
    model.head.knows[domain] = torch.tensor([r in set(regions) for r in model.regions])
    _sync_experts(model)


def declare_expert_regions(model: UHarmonyNet, profiles: Sequence[dict]) -> None:
    """Each domain expert knows the regions its sites annotate (union over ``profiles``: dicts with
    ``domain`` and ``regions``); domains no profile names keep every region."""
    by_domain: dict[int, set] = {}
    for prof in profiles:
        if not prof["regions"]:  # a label-free site says nothing about what its domain annotates
            continue
        by_domain.setdefault(int(prof["domain"]), set()).update(prof["regions"])
    for domain, regions in sorted(by_domain.items()):
        if 0 <= domain < model.head.num_domains:
            set_expert_regions(model, domain, [r for r in model.regions if r in regions])


def add_domain(model: UHarmonyNet) -> int:
    """Add a domain expert + prototype slot to the gated head; returns the new domain id."""
    _check(model)
    if not isinstance(model.head, DomainGatedHead):
        raise ValueError("add_domain: only models with head='gated' have domains")
    d = model.head.add_domain()
    model.spec["num_domains"] = model.head.num_domains
    _sync_experts(model)
    return d


def extend_model(
    model: UHarmonyNet, modalities: Sequence[str] = (), regions: Sequence[str] = (), domain: int | None = None
) -> dict[str, list]:
    """Make ``model`` able to serve a site with these modalities, annotated regions and domain id.

    Adds, in this order, the modalities and regions the model lacks (in the site's order) and, for a
    gated head, domain experts up to ``domain``. Returns ``{"modalities": [...], "regions": [...],
    "domains": [...]}``: what was added (all empty when the model already fits).
    """
    _check(model)
    added = {"modalities": [], "regions": [], "domains": []}
    for name in modalities:
        if name not in model.modalities:
            add_modality(model, name)
            added["modalities"].append(name)
    new_regions = [r for r in dict.fromkeys(regions) if r not in model.regions]
    if new_regions:
        add_classes(model, new_regions)
        added["regions"] = new_regions
    if domain is not None and model.gated:
        if not isinstance(domain, int) or domain < 0:
            raise ValueError(f"extend_model: domain must be a non-negative int, got {domain!r}")
        while model.head.num_domains <= domain:
            added["domains"].append(add_domain(model))
        if domain in added["domains"]:  # a new domain's expert learns what its site annotates
            set_expert_regions(model, domain, regions)
    return added


EXTENDABLE = ("modalities", "in_channels", "regions", "out_channels", "num_domains", "expert_regions")


def spec_differences(base: dict, spec: dict) -> str:
    """What makes ``spec`` (a checkpoint's) another model than ``base`` (the run config's), beside what joins
    extend: ``key: run ..., checkpoint ...`` for each such key (a key a spec lacks is ``absent``: an older
    model, built as that key's default was then, e.g. ``presence_pool`` absent = the bottleneck head)."""
    import json

    base, spec = json.loads(json.dumps(base)), json.loads(json.dumps(spec))
    keys = sorted((set(base) | set(spec)) - set(EXTENDABLE))
    return "; ".join(
        f"{k}: run {base.get(k, 'absent')!r}, checkpoint {spec.get(k, 'absent')!r}"
        for k in keys
        if base.get(k, "absent") != spec.get(k, "absent")
    )


def spec_extends(base: dict, spec: dict) -> bool:
    """Is ``spec`` the model of ``base`` grown by joins (more modalities, regions or domains, in order)?

    Used on resume: a run whose model grew mid-run continues from its extended checkpoint.
    """
    import json

    from uharmony.vocabulary import REGIONS as DEFAULT_REGIONS

    base, spec = json.loads(json.dumps(base)), json.loads(json.dumps(spec))  # as stored: tuples become lists

    def regions(s):
        return list(s.get("regions") or (DEFAULT_REGIONS if s["out_channels"] == 3 else []))

    if {k: v for k, v in base.items() if k not in EXTENDABLE} != {k: v for k, v in spec.items() if k not in EXTENDABLE}:
        return False
    mods_b, mods_s = list(base["modalities"]), list(spec["modalities"])
    return (
        mods_s[: len(mods_b)] == mods_b
        and regions(spec)[: len(regions(base))] == regions(base)
        and spec["num_domains"] >= base["num_domains"]
    )

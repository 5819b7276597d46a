"""U-Harmony: two-stage feature harmonization and a domain-gated head for federated segmentation,
and everything Flower-free beneath the apps. Importable without Flower.

Method: ``norm`` (UHarmonyNorm), ``head`` (DomainGatedHead), ``networks`` (MONAI builders), ``roles``
(shared / site-local / per-domain, by module type), ``adaptation`` (new modality, class, domain).
Federation: ``strategies`` (the strategy table), ``config`` (typed run config), ``protocol`` (message
keys), ``federated`` (what a site sends, keeps and receives), ``site_round`` (a site's round),
``training`` / ``inference``, ``checkpoint`` / ``site_state`` / ``runlog`` (files a run writes).
Data: ``uharmony.data`` (cases, sites, manifests, reading and preprocessing NIfTI).
Names: ``vocabulary`` (modalities, regions, model choices, parameter roles, plans; imports nothing: the
light modules take their names from it, never from ``networks``).
"""

import importlib

# Names are loaded on first use (PEP 562), so that a command that needs only a small module (a key, a
# file helper) does not pay for torch and MONAI.
_EXPORTS = {
    "adaptation": ("add_classes", "add_domain", "add_modality", "extend_model"),
    "head": ("DomainExpert", "DomainGatedHead"),
    "networks": (
        "ARCHS",
        "DEFAULT_MODALITIES",
        "DEFAULT_REGIONS",
        "NORMS",
        "UHarmonyNet",
        "build_model",
        "harmonize",
        "model_from_spec",
    ),
    "norm": ("UHarmonyNorm",),
    "roles": ("DOMAIN", "LOCAL", "ROLES", "SHARED", "domain_of", "param_roles", "role_counts"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

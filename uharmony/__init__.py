"""U-Harmony: two-stage feature harmonization and a domain-gated head for federated segmentation,
and everything Flower-free beneath the apps. Importable without Flower.

Layers, each importing only those below it (tests/test_architecture.py checks it):

- base modules here: ``vocabulary`` (modalities, regions, model choices, parameter roles, plans; imports
  nothing: the light modules take their names from it), ``checks``, ``files``, ``protocol`` (message keys),
  ``precision``, ``loopback_peers``;
- ``uharmony.data``: cases, sites, manifests, reading and preprocessing NIfTI;
- ``uharmony.model``: UHarmonyNorm, the domain-gated head, the MONAI networks, roles, adaptation, training,
  inference;
- ``uharmony.umsrep``: UMS-Rep's plans, pretraining and fine-tuning steps, derivable outputs;
- ``uharmony.records``: checkpoints, signed releases, MONAI bundles, run logs, plots, tracking;
- ``uharmony.federation``: the strategy table, the run config, a site's round and state.
"""

import importlib

# Names are loaded on first use (PEP 562), so that a command that needs only a small module (a key, a
# file helper) does not pay for torch and MONAI.
_EXPORTS = {
    "model.adaptation": ("add_classes", "add_domain", "add_modality", "extend_model"),
    "model.head": ("DomainExpert", "DomainGatedHead"),
    "model.networks": (
        "ARCHS",
        "DEFAULT_MODALITIES",
        "DEFAULT_REGIONS",
        "NORMS",
        "UHarmonyNet",
        "build_model",
        "harmonize",
        "model_from_spec",
    ),
    "model.norm": ("UHarmonyNorm",),
    "model.roles": ("DOMAIN", "LOCAL", "ROLES", "SHARED", "domain_of", "param_roles", "role_counts"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

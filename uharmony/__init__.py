"""U-Harmony: two-stage feature harmonization and a domain-gated head for federated segmentation,
and everything Flower-free beneath the apps. Importable without Flower.

Method: ``norm`` (UHarmonyNorm), ``head`` (DomainGatedHead), ``networks`` (MONAI builders), ``roles``
(shared / site-local / per-domain, by module type), ``adaptation`` (new modality, class, domain).
Federation: ``strategies`` (the strategy table), ``config`` (typed run config), ``protocol`` (message
keys), ``federated`` (what a site sends, keeps and receives), ``site_round`` (a site's round),
``training`` / ``inference``, ``checkpoint`` / ``site_state`` / ``runlog`` (files a run writes).
Data: ``uharmony.data`` (cases, sites, manifests, reading and preprocessing NIfTI).
"""

from .adaptation import add_classes, add_domain, add_modality, extend_model
from .head import DomainExpert, DomainGatedHead
from .networks import (
    ARCHS,
    DEFAULT_MODALITIES,
    DEFAULT_REGIONS,
    NORMS,
    UHarmonyNet,
    build_model,
    harmonize,
    model_from_spec,
)
from .norm import UHarmonyNorm
from .roles import DOMAIN, LOCAL, ROLES, SHARED, domain_of, param_roles, role_counts

__all__ = [
    "ARCHS",
    "DEFAULT_MODALITIES",
    "DEFAULT_REGIONS",
    "DOMAIN",
    "LOCAL",
    "NORMS",
    "ROLES",
    "SHARED",
    "DomainExpert",
    "DomainGatedHead",
    "UHarmonyNet",
    "UHarmonyNorm",
    "add_classes",
    "add_domain",
    "add_modality",
    "build_model",
    "extend_model",
    "domain_of",
    "harmonize",
    "model_from_spec",
    "param_roles",
    "role_counts",
]

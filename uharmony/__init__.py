"""U-Harmony: two-stage feature harmonization and a domain-gated head for federated segmentation.

Importable without Flower.
"""

from .adaptation import add_classes, add_domain, add_modality, extend_model
from .head import DomainExpert, DomainGatedHead
from .networks import ARCHS, DEFAULT_MODALITIES, DEFAULT_REGIONS, NORMS, UHarmonyNet, build_model, harmonize, model_from_spec
from .norm import UHarmonyNorm
from .roles import DOMAIN, LOCAL, ROLES, SHARED, domain_of, param_roles, role_counts

__all__ = [
    "ARCHS", "DEFAULT_MODALITIES", "DEFAULT_REGIONS", "DOMAIN", "LOCAL", "NORMS", "ROLES", "SHARED",
    "DomainExpert", "DomainGatedHead", "UHarmonyNet", "UHarmonyNorm",
    "add_classes", "add_domain", "add_modality", "build_model", "extend_model", "domain_of", "harmonize",
    "model_from_spec", "param_roles", "role_counts",
]

"""Parameter roles: which state-dict entries are shared, site-local or per-domain.

Decided by module type and attribute only (never by substrings of names):
- ``UHarmonyNorm``: its buffers (site harmonization statistics) are ``local``; its polynomial
  coefficients are ``local`` when the layer was built with ``site_local="stats+coefficients"``,
  else ``shared``.
- everything inside a ``DomainExpert`` of a ``DomainGatedHead`` is ``domain`` (aggregated per domain).
- with ``local_norm=True`` (FedBN) every normalization layer's parameters and buffers are ``local``.
- everything else is ``shared`` (averaged).
"""

from __future__ import annotations

from torch import nn

from .head import DomainExpert, DomainGatedHead
from .norm import UHarmonyNorm

SHARED, LOCAL, DOMAIN = "shared", "local", "domain"
ROLES = (SHARED, LOCAL, DOMAIN)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, UHarmonyNorm)


def _walk(module: nn.Module, prefix: str, inherited: str | None, local_norm: bool, out: dict, domains: dict, dom):
    if isinstance(module, DomainExpert):
        inherited = DOMAIN
    local_state = list(module.named_parameters(recurse=False)) + [
        (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
    ]
    for name, value in local_state:
        key = prefix + name
        if inherited is not None:
            role = inherited
        elif local_norm and isinstance(module, NORM_TYPES):
            role = LOCAL
        elif isinstance(module, UHarmonyNorm):
            is_param = isinstance(value, nn.Parameter)
            role = LOCAL if (not is_param or module.coefficients_are_local) else SHARED
        else:
            role = SHARED
        out[key] = role
        if role == DOMAIN:
            domains[key] = dom
    for child_name, child in module.named_children():
        child_dom = dom
        if isinstance(module, DomainGatedHead) and child is module.experts:
            for i, expert in enumerate(module.experts):
                _walk(expert, f"{prefix}{child_name}.{i}.", inherited, local_norm, out, domains, i)
            continue
        _walk(child, f"{prefix}{child_name}.", inherited, local_norm, out, domains, child_dom)


def _roles_and_domains(model: nn.Module, local_norm: bool) -> tuple[dict[str, str], dict[str, int]]:
    roles: dict[str, str] = {}
    domains: dict[str, int] = {}
    _walk(model, "", None, local_norm, roles, domains, None)
    keys = list(model.state_dict().keys())
    missing = [k for k in keys if k not in roles]
    if missing:  # e.g. a module type whose state is not held in parameters/buffers
        raise RuntimeError(f"param_roles: no role for state-dict keys {missing[:5]}")
    return {k: roles[k] for k in keys}, domains


def param_roles(model: nn.Module, local_norm: bool = False) -> dict[str, str]:
    """Role (``shared`` / ``local`` / ``domain``) of every key of ``model.state_dict()``."""
    return _roles_and_domains(model, local_norm)[0]


def domain_of(model: nn.Module) -> dict[str, int]:
    """For every ``domain`` key: the index of the domain (expert) it belongs to."""
    return _roles_and_domains(model, False)[1]


def role_counts(model: nn.Module, local_norm: bool = False) -> dict[str, int]:
    """Number of scalar values per role (parameters and buffers)."""
    state = model.state_dict()
    counts = dict.fromkeys(ROLES, 0)
    for key, role in param_roles(model, local_norm).items():
        counts[role] += state[key].numel()
    return counts

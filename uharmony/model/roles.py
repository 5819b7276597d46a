"""Parameter roles: which state-dict entries are shared, site-local or per-domain.

Decided by module type and attribute only (never by substrings of names):
- ``UHarmonyNorm``: its buffers (site harmonization statistics) are ``local``; its polynomial
  coefficients are ``local`` when the layer was built with ``site_local="stats+coefficients"``,
  else ``shared``.
- everything inside a ``DomainExpert`` of a ``DomainGatedHead`` is ``domain`` (aggregated per domain).
- everything else is ``shared`` (averaged).

A strategy may keep more at the site (``uharmony.federation.strategies``: FedBN keeps every normalization layer).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from uharmony.model.head import DomainExpert, DomainGatedHead
from uharmony.model.norm import NORM_TYPES, UHarmonyNorm
from uharmony.vocabulary import DOMAIN, LOCAL, ROLES, SHARED


def _own_state(module: nn.Module, prefix: str, state_keys: set[str]) -> list[tuple[str, object]]:
    """The module's own (non-recursive) parameters and buffers that appear in the model's state dict."""
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return [(n, v) for n, v in own if prefix + n in state_keys]


def module_state_keys(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> set[str]:
    """State-dict keys held directly by the modules for which ``predicate`` is true, under every name a module
    is reachable by (MONAI's DynUNet holds its blocks twice: ``input_block`` and ``skip_layers.downsample``)."""
    state_keys = set(model.state_dict().keys())
    keys = set()
    for name, module in model.named_modules(remove_duplicate=False):
        if predicate(module):
            prefix = f"{name}." if name else ""
            keys.update(prefix + n for n, _ in _own_state(module, prefix, state_keys))
    return keys


def _walk(module: nn.Module, prefix: str, inherited: str | None, out: dict, domains: dict, dom, keys: set) -> None:
    if isinstance(module, DomainExpert):
        inherited = DOMAIN
    for name, value in _own_state(module, prefix, keys):
        if inherited is not None:
            role = inherited
        elif isinstance(module, UHarmonyNorm):
            role = LOCAL if (not isinstance(value, nn.Parameter) or module.coefficients_are_local) else SHARED
        else:
            role = SHARED
        out[prefix + name] = role
        if role == DOMAIN:
            domains[prefix + name] = dom
    for child_name, child in module.named_children():
        if isinstance(module, DomainGatedHead) and child is module.experts:
            for i, expert in enumerate(module.experts):
                _walk(expert, f"{prefix}{child_name}.{i}.", inherited, out, domains, i, keys)
            continue
        _walk(child, f"{prefix}{child_name}.", inherited, out, domains, dom, keys)


def roles_and_domains(model: nn.Module) -> tuple[dict[str, str], dict[str, int]]:
    """(role of every state-dict key, domain index of every ``domain`` key)."""
    roles: dict[str, str] = {}
    domains: dict[str, int] = {}
    keys = list(model.state_dict().keys())
    _walk(model, "", None, roles, domains, None, set(keys))
    missing = [k for k in keys if k not in roles]
    if missing:  # e.g. a module type whose state is not held in parameters/buffers
        raise RuntimeError(f"param_roles: no role for state-dict keys {missing[:5]}")
    return {k: roles[k] for k in keys}, domains


def param_roles(model: nn.Module, local_norm: bool = False) -> dict[str, str]:
    """Role (``shared`` / ``local`` / ``domain``) of every key of ``model.state_dict()``.

    ``local_norm=True``: every normalization layer is ``local`` too (FedBN).
    """
    roles = roles_and_domains(model)[0]
    if local_norm:
        local = module_state_keys(model, lambda m: isinstance(m, NORM_TYPES))
        roles = {k: LOCAL if k in local else r for k, r in roles.items()}
    return roles


def domain_of(model: nn.Module) -> dict[str, int]:
    """For every ``domain`` key: the index of the domain (expert) it belongs to."""
    return roles_and_domains(model)[1]


def role_counts(model: nn.Module, local_norm: bool = False) -> dict[str, int]:
    """Number of scalar values per role (parameters and buffers)."""
    state = model.state_dict()
    counts = dict.fromkeys(ROLES, 0)
    for key, role in param_roles(model, local_norm).items():
        counts[role] += state[key].numel()
    return counts

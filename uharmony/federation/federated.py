"""Federation-side model bookkeeping without Flower: what a site sends, keeps and receives.

Roles come from :func:`uharmony.param_roles` (module types, never names), turned into a strategy's by
its table entry (``uharmony.federation.strategies``). States are ``{key: CPU tensor}`` dicts, the form
``flwr.app.ArrayRecord(state)`` / ``ArrayRecord.to_torch_state_dict()`` exchange.
"""

from __future__ import annotations

import torch

from uharmony.federation.strategies import get_strategy
from uharmony.model.head import DomainExpert, DomainGatedHead
from uharmony.model.roles import DOMAIN, LOCAL, SHARED, roles_and_domains

State = dict[str, torch.Tensor]


class ModelRoles:
    """Roles of a model's state entries under a strategy (``uharmony.federation.strategies``)."""

    def __init__(self, model: torch.nn.Module, strategy: str = "uharmony") -> None:
        roles, domains = roles_and_domains(model)
        keep_local = get_strategy(strategy).keep_local
        self.roles = keep_local(model, roles) if keep_local else roles
        self.domain_of = {k: d for k, d in domains.items() if self.roles[k] == DOMAIN}
        self.parameters = {name for name, _ in model.named_parameters()}  # trained weights (not statistics)
        # each domain's prototype entries: (mean, per-dimension variance, number of scans, reach)
        self.prototypes: dict[int, tuple[str, str, str, str]] = {}
        for name, module in model.named_modules():
            if isinstance(module, DomainExpert) and f"{name}.prototype" in self.domain_of:
                keys = (f"{name}.prototype", f"{name}.spread", f"{name}.count", f"{name}.reach")
                self.prototypes[self.domain_of[keys[0]]] = keys
        self.nonnegative = {k for keys in self.prototypes.values() for k in (keys[1], keys[3])}
        # a scan gate's prototype counts scans (at most a site's cases); the window gate's counts windows
        scan_gate = any(isinstance(m, DomainGatedHead) and m.gate_kind == "scan" for m in model.modules())
        self.scan_counts = {k[2] for k in self.prototypes.values()} if scan_gate else set()

    def keys(self, role: str) -> list[str]:
        return [k for k, r in self.roles.items() if r == role]

    def global_keys(self) -> list[str]:
        """Entries the server holds (everything but site-local ones)."""
        return [k for k, r in self.roles.items() if r != LOCAL]

    def outgoing_keys(self, domain: int | None) -> list[str]:
        """What a site of ``domain`` sends after training: shared entries + its own domain's head parts."""
        return [
            k
            for k, r in self.roles.items()
            if r == SHARED or (r == DOMAIN and domain is not None and self.domain_of[k] == domain)
        ]

    def domain_keys(self, domain: int) -> list[str]:
        return [k for k, d in self.domain_of.items() if d == domain]

    @property
    def gated(self) -> bool:
        return bool(self.domain_of)


def subset(state: State, keys) -> State:
    """Detached CPU copies of ``keys`` of a state dict."""
    return {k: state[k].detach().cpu().clone() for k in keys}


def global_state_of(model: torch.nn.Module, roles: ModelRoles) -> State:
    return subset(model.state_dict(), roles.global_keys())


def local_state_of(model: torch.nn.Module, roles: ModelRoles) -> State:
    return subset(model.state_dict(), roles.keys(LOCAL))


def load_global_and_local(
    model: torch.nn.Module, roles: ModelRoles, global_state: State, local_state: State | None
) -> None:
    """Load the server's entries and the site's own local entries (strict: every key accounted for).

    Without a saved local state (first round at this site) the local entries keep their
    initialization, i.e. fresh harmonization statistics.
    """
    expected, got = set(roles.global_keys()), set(global_state)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ValueError(f"global model entries do not match this model: missing {missing[:5]}, unexpected {extra[:5]}")
    state = model.state_dict()
    new = {k: torch.as_tensor(v).to(state[k].dtype) for k, v in global_state.items()}
    local_keys = roles.keys(LOCAL)
    if local_state is not None:
        if set(local_state) != set(local_keys):
            raise ValueError(
                "saved site state does not match the model's site-local entries "
                f"({len(local_state)} saved vs {len(local_keys)} expected)"
            )
        new.update(local_state)
    else:
        new.update({k: state[k] for k in local_keys})
    model.load_state_dict(new, strict=True)


def model_needs(model, modalities, regions, domain: int | None) -> dict[str, list]:
    """What :func:`uharmony.extend_model` would add for a site (dry run; the model is not changed)."""
    new_domains = list(range(model.head.num_domains, domain + 1)) if model.gated and domain is not None else []
    return {
        "modalities": [m for m in modalities if m not in model.modalities],
        "regions": [r for r in dict.fromkeys(regions) if r not in model.regions],
        "domains": new_domains,
    }


def extend_global_model(
    spec: dict, global_state: State, strategy: str, modalities, regions, domain: int | None, fresh: bool = False
):
    """The server's side of a join: rebuild the model, load what was learned, extend it for the site.

    Returns ``(model, roles, new global state, added)``. Every entry the old global state held keeps
    its value, except the head entries whose shape grows with new classes (the old channels keep
    their values). Site-local entries are not touched: they live at the sites, and no extension adds one.
    ``fresh``: no site has trained yet (the first admission), so there is no site-local state to orphan and
    even a model without global entries (local training) can grow.
    """
    from uharmony.model.adaptation import extend_model
    from uharmony.model.networks import model_from_spec

    model = model_from_spec(spec)
    roles = ModelRoles(model, strategy)
    if not roles.global_keys() and not fresh:
        raise ValueError(f"strategy {strategy!r} has no global model to extend")
    load_global_and_local(model, roles, global_state, None)
    local_before = set(roles.keys(LOCAL))
    added = extend_model(model, modalities, regions, domain)
    roles = ModelRoles(model, strategy)
    if set(roles.keys(LOCAL)) != local_before and not fresh:  # would orphan the sites' saved local state
        raise RuntimeError("extend_global_model: the extension changed the site-local entries")
    return model, roles, global_state_of(model, roles), added

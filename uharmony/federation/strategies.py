"""The strategies, declared once: this table is the only place that knows what a strategy name means.

Each entry says what model it trains (normalization and head when the run config leaves them on
``auto``), which state entries stay at the site, which Flower strategy the server aggregates with (and
which run-config keys it takes), and whether one member trains on pooled data. The server, the site and
the benchmark read these fields; none of them switches on a strategy's name. Adding a strategy is one
``register(Strategy(...))`` call plus its own code (a ``keep_local`` function, a Flower strategy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uharmony.checks import one_of
from uharmony.vocabulary import HEADS, LOCAL, NORMS, SHARED

if TYPE_CHECKING:  # the table is read without torch (the run config, a site's profile); a model brings it
    from torch import nn

KeepLocal = Callable[["nn.Module", dict[str, str]], dict[str, str]]


def norm_layers_stay(model: nn.Module, roles: dict[str, str]) -> dict[str, str]:
    """FedBN: every normalization layer's parameters and buffers stay at the site."""
    from uharmony.model.roles import NORM_TYPES, module_state_keys

    local = module_state_keys(model, lambda m: isinstance(m, NORM_TYPES))
    return {k: LOCAL if k in local else r for k, r in roles.items()}


def statistics_pooled(model: nn.Module, roles: dict[str, str]) -> dict[str, str]:
    """Centralized U-Harmony: the pooled data is one site, so its harmonization statistics are part of the
    model every site evaluates (nothing is site-local)."""
    return {k: SHARED if r == LOCAL else r for k, r in roles.items()}


def everything_stays(model: nn.Module, roles: dict[str, str]) -> dict[str, str]:
    """Local training: nothing leaves the site."""
    return dict.fromkeys(roles, LOCAL)


@dataclass(frozen=True)
class Strategy:
    """One federated strategy.

    Attributes:
        name: the run config's ``strategy`` value.
        summary: one line for the README, logs and reports.
        norm: the model's normalization when the run config says ``norm = "auto"``.
        head: ``"gated"`` (one expert + prototype per domain, U-Harmony) or ``"plain"`` (one 1x1 conv).
        keep_local: turns the role function's roles (``uharmony.param_roles``: by module type) into this
            strategy's; ``None`` keeps them. Entries whose role is ``local`` never leave the site.
        server: the class in ``flwr.serverapp.strategy`` the server aggregates with (the server adds
            role-aware aggregation and reply checks on top of it).
        server_options: run-config keys passed to that class (``proximal-mu`` -> ``proximal_mu``). Flower's
            FedProx sends ``proximal-mu`` in every train message; a site adds the proximal term when it is > 0.
        pooled: one member trains on the union of every site's training data, with the budget of all
            sites (the centralized baseline; only a simulated federation can do it).
        dp: the server-side differential-privacy wrapper applies (identical update keys from every site).
    """

    name: str
    summary: str
    norm: str = "instance"
    head: str = "plain"
    keep_local: KeepLocal | None = None
    server: str = "FedAvg"
    server_options: tuple[str, ...] = ()
    pooled: bool = False
    dp: bool = True

    def __post_init__(self) -> None:
        one_of(f"strategy {self.name!r}: head", self.head, HEADS)
        one_of(f"strategy {self.name!r}: norm", self.norm, NORMS)


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the table (its name must be new)."""
    if strategy.name in STRATEGIES:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    STRATEGIES[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """The table entry for ``name``; an unknown name is an error that lists the known ones."""
    return STRATEGIES[one_of("strategy", name, STRATEGIES)]


for _s in (
    Strategy(
        "uharmony",
        "U-Harmony: harmonized normalization (statistics stay at the site) + domain-gated head",
        norm="uharmony",
        head="gated",
        dp=False,
    ),
    Strategy("fedavg", "FedAvg: every entry averaged, weighted by training cases"),
    Strategy(
        "fedprox",
        "FedProx: FedAvg plus a proximal term in local training",
        server="FedProx",
        server_options=("proximal-mu",),
    ),
    Strategy("fedbn", "FedBN: normalization layers stay at the site", keep_local=norm_layers_stay),
    Strategy(
        "local",
        "local only: every site trains its own model, nothing is aggregated",
        keep_local=everything_stays,
        dp=False,
    ),
    Strategy(
        "centralized",
        "centralized: one model trained on the pooled data of every site (simulation only)",
        pooled=True,
        dp=False,
    ),
    Strategy(
        "centralized-uharmony",
        "centralized U-Harmony: the U-Harmony model trained on the pooled data (joint training; simulation only)",
        norm="uharmony",
        head="gated",
        keep_local=statistics_pooled,
        pooled=True,
        dp=False,
    ),
):
    register(_s)

"""Role-aware aggregation on Flower's own strategies.

The strategy table (``uharmony.strategies``) names a class of ``flwr.serverapp.strategy`` (FedAvg,
FedProx, ...). :func:`build_strategy` puts :class:`RoleAware` under it: Flower's class configures the
round (FedProx adds ``proximal-mu`` to the config), ``RoleAware`` aggregates shared entries over every
reply and each domain's head parts over that domain's replies only, weighted by training cases
(Flower's ``aggregate_arrayrecords``). Site-local entries never arrive. With differential privacy the
result is wrapped in Flower's server-side fixed-clipping wrapper.

Replies reach it only after ``server/replies.py`` has checked them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, State

from .replies import TRAIN_METRICS

log = logging.getLogger("uharmony.server")


class RoleAware(FedAvg):
    """Role-aware aggregation, placed under a Flower strategy class by :func:`build_strategy`."""

    roles: ModelRoles
    global_state: State

    def attach(self, roles: ModelRoles, global_state: State) -> None:
        self.roles, self.global_state = roles, dict(global_state)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Replies were checked already (``server/replies.py``); returns (new global arrays, metrics)."""
        parsed = [
            (
                dict(m.content[P.ARRAYS].to_torch_state_dict()),
                float(m.content[P.METRICS][P.NUM_EXAMPLES]),
                {k: m.content[P.METRICS][k] for k in TRAIN_METRICS if k in m.content[P.METRICS]},
            )
            for m in replies
        ]
        if not parsed:
            return None, None
        # shared entries over every reply; each domain's head parts over the replies that carry them (a site
        # sends its own domain's only: the checker rejected anything else)
        groups = [self.roles.keys("shared")] + [
            self.roles.domain_keys(d) for d in sorted(set(self.roles.domain_of.values()))
        ]
        new_state = dict(self.global_state)
        carried = set().union(*(set(arrays) for arrays, _, _ in parsed))
        for keys in groups:  # a UMS-Rep plan sends part of a group (a frozen trunk): what was sent is averaged
            keys = [k for k in keys if k in carried]
            members = [(arrays, weight) for arrays, weight, _ in parsed if keys and set(keys) <= set(arrays)]
            if not members:
                continue
            records = [
                RecordDict(
                    {
                        P.ARRAYS: ArrayRecord({k: arrays[k] for k in keys}),
                        P.METRICS: MetricRecord({P.NUM_EXAMPLES: weight}),
                    }
                )
                for arrays, weight in members
            ]
            merged = aggregate_arrayrecords(records, P.NUM_EXAMPLES).to_torch_state_dict()
            new_state.update({k: merged[k].to(self.global_state[k].dtype) for k in keys})
        self.global_state = new_state
        numeric = [RecordDict({P.METRICS: MetricRecord(metrics)}) for _, _, metrics in parsed]
        return ArrayRecord(new_state), self.train_metrics_aggr_fn(numeric, P.NUM_EXAMPLES)


def build_strategy(cfg: RunConfig, roles: ModelRoles, global_state: State):
    """(the round's strategy object, the role-aware strategy inside it) for ``cfg.strategy``'s table entry."""
    spec = cfg.strategy_spec
    base = getattr(flower_strategies, spec.server, None)
    if not (isinstance(base, type) and issubclass(base, FedAvg)):
        raise ValueError(f"strategy {spec.name!r}: flwr.serverapp.strategy.{spec.server} is not a FedAvg-family class")
    cls = RoleAware if base is FedAvg else type(f"RoleAware{base.__name__}", (base, RoleAware), {})
    options = {k.replace("-", "_"): getattr(cfg, k.replace("-", "_")) for k in spec.server_options}
    inner = cls(
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        weighted_by_key=P.NUM_EXAMPLES,
        arrayrecord_key=P.ARRAYS,
        configrecord_key=P.CONFIG,
        **options,
    )
    inner.attach(roles, global_state)
    if cfg.dp_noise_multiplier > 0:
        return DifferentialPrivacyServerSideFixedClipping(
            inner, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, num_sampled_clients=1
        ), inner
    return inner, inner

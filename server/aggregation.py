"""Role-aware aggregation on Flower's own strategies, and the one check every train reply goes through.

The strategy table (``uharmony.strategies``) names a class of ``flwr.serverapp.strategy`` (FedAvg,
FedProx, ...). :func:`build_strategy` puts :class:`RoleAware` under it: Flower's class configures the
round (FedProx adds ``proximal-mu`` to the config), ``RoleAware`` aggregates shared entries over every
reply and each domain's head parts over that domain's replies only, weighted by training cases
(Flower's ``aggregate_arrayrecords``). Site-local entries never arrive. With differential privacy the
result is wrapped in Flower's server-side fixed-clipping wrapper.

:class:`ReplyChecker` screens replies *before* any of that: a reply with the wrong entries, shapes,
dtypes, non-finite values, a bad weight, or an update norm far above the others' is rejected with its
reason, and the round goes on with the rest.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, State

log = logging.getLogger("uharmony.server")


class RejectedUpdate(ValueError):
    pass


@dataclass
class Reply:
    """A checked train reply."""

    node: int
    site: str
    domain: int | None
    arrays: State
    weight: float
    metrics: dict


def parse_reply(msg: Message, roles: ModelRoles) -> Reply:
    content = msg.content
    if P.ARRAYS not in content.array_records or P.METRICS not in content.metric_records:
        raise RejectedUpdate("reply lacks the arrays or metrics record")
    metrics = dict(content.metric_records[P.METRICS])
    ident = dict(content.config_records[P.SITE]) if P.SITE in content.config_records else {}
    weight = metrics.get(P.NUM_EXAMPLES)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise RejectedUpdate(f"{P.NUM_EXAMPLES} must be a positive finite number, got {weight!r}")
    domain = ident.get(P.DOMAIN_ID) if roles.gated else None
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int)):
        raise RejectedUpdate(f"{P.DOMAIN_ID} must be an int, got {domain!r}")
    try:
        arrays = dict(content.array_records[P.ARRAYS].to_torch_state_dict())
    except (TypeError, ValueError) as exc:
        raise RejectedUpdate(f"arrays cannot be read as NumPy arrays ({exc})") from None
    return Reply(
        msg.metadata.src_node_id,
        str(ident.get(P.SITE_ID, msg.metadata.src_node_id)),
        domain,
        arrays,
        float(weight),
        metrics,
    )


class ReplyChecker:
    """Checks replies against the server's global state; see the module docstring."""

    def __init__(
        self, roles: ModelRoles, global_state: State, update_norm_factor: float = 10.0, pooled: bool = False
    ) -> None:
        self.roles, self.global_state, self.update_norm_factor = roles, global_state, update_norm_factor
        self.pooled = pooled  # the trainer holds every site's data: it sends every global entry

    def check(self, msg: Message) -> Reply:
        if msg.has_error():
            raise RejectedUpdate(f"client error: {msg.error.reason}")
        reply = parse_reply(msg, self.roles)
        expected = set(self.roles.global_keys() if self.pooled else self.roles.outgoing_keys(reply.domain))
        if set(reply.arrays) != expected:
            missing, extra = sorted(expected - set(reply.arrays)), sorted(set(reply.arrays) - expected)
            raise RejectedUpdate(f"keys differ from the expected update: missing {missing[:3]}, extra {extra[:3]}")
        for k, v in reply.arrays.items():
            ref = self.global_state[k]
            if v.shape != ref.shape or v.dtype != ref.dtype:
                raise RejectedUpdate(
                    f"{k}: shape/dtype {tuple(v.shape)}/{v.dtype} instead of {tuple(ref.shape)}/{ref.dtype}"
                )
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise RejectedUpdate(f"{k}: contains NaN or Inf")
        return reply

    def update_norm(self, reply: Reply) -> float:
        return math.sqrt(
            sum(
                float((v.double() - self.global_state[k].double()).pow(2).sum())
                for k, v in reply.arrays.items()
                if v.is_floating_point()
            )
        )

    def screen(self, replies: Iterable[Message]) -> tuple[list[Message], list[Reply], list[dict]]:
        """(accepted messages, their checked replies, rejections ``{node, site?, reason}``), sorted by site
        so that aggregation sums in the same order whatever order replies arrived in."""
        accepted, rejected = [], []
        for msg in replies:
            try:
                accepted.append((self.check(msg), msg))
            except RejectedUpdate as exc:
                rejected.append({"node": msg.metadata.src_node_id, "reason": str(exc)})
        if len(accepted) >= 3 and self.update_norm_factor > 0:
            norms = [self.update_norm(r) for r, _ in accepted]
            median = statistics.median(norms)
            keep = []
            for (reply, msg), norm in zip(accepted, norms):
                if median > 0 and norm > self.update_norm_factor * median:
                    rejected.append(
                        {
                            "node": reply.node,
                            "site": reply.site,
                            "reason": f"update norm {norm:.3g} > {self.update_norm_factor} x median {median:.3g}",
                        }
                    )
                else:
                    keep.append((reply, msg))
            accepted = keep
        accepted.sort(key=lambda pair: (pair[0].site, pair[0].node))
        return [m for _, m in accepted], [r for r, _ in accepted], rejected


class RoleAware(FedAvg):
    """Role-aware aggregation, placed under a Flower strategy class by :func:`build_strategy`."""

    roles: ModelRoles
    global_state: State

    def attach(self, roles: ModelRoles, global_state: State) -> None:
        self.roles, self.global_state = roles, dict(global_state)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Replies were screened already (:class:`ReplyChecker`); returns (new global arrays, metrics)."""
        parsed = [parse_reply(m, self.roles) for m in replies]
        if not parsed:
            return None, None
        # shared entries over every reply; each domain's head parts over the replies that carry them (a site
        # sends its own domain's only: the checker rejected anything else)
        groups = [self.roles.keys("shared")] + [
            self.roles.domain_keys(d) for d in sorted(set(self.roles.domain_of.values()))
        ]
        new_state = dict(self.global_state)
        for keys in groups:
            members = [r for r in parsed if keys and set(keys) <= set(r.arrays)]
            if not members:
                continue
            records = [
                RecordDict(
                    {
                        P.ARRAYS: ArrayRecord({k: r.arrays[k] for k in keys}),
                        P.METRICS: MetricRecord({P.NUM_EXAMPLES: r.weight}),
                    }
                )
                for r in members
            ]
            merged = aggregate_arrayrecords(records, P.NUM_EXAMPLES).to_torch_state_dict()
            new_state.update({k: merged[k].to(self.global_state[k].dtype) for k in keys})
        self.global_state = new_state
        numeric = [
            RecordDict(
                {
                    P.METRICS: MetricRecord(
                        {k: v for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                    )
                }
            )
            for r in parsed
        ]
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

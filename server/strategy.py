"""Role-aware federated averaging on ``flwr.serverapp.strategy.FedAvg``.

Shared entries are averaged over every accepted reply, weighted by training cases (Flower's
``aggregate_arrayrecords``); each domain's head parts are averaged over the replies of that domain only;
site-local entries never arrive. Each reply is checked first; a bad one is logged, dropped and the
round continues while at least ``min_sites`` replies remain.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from client.records import from_record, to_record
from uharmony import protocol as P
from uharmony.federated import ModelRoles

log = logging.getLogger("uharmony.server")


class RejectedUpdate(ValueError):
    pass


class RoleAwareFedAvg(FedAvg):
    def __init__(self, roles: ModelRoles, global_state: dict[str, np.ndarray], min_sites: int = 1,
                 update_norm_factor: float = 10.0, proximal_mu: float = 0.0, **kwargs) -> None:
        kwargs.setdefault("weighted_by_key", P.NUM_EXAMPLES)
        kwargs.setdefault("arrayrecord_key", P.ARRAYS)
        kwargs.setdefault("configrecord_key", P.CONFIG)
        super().__init__(**kwargs)
        self.roles = roles
        self.global_state = dict(global_state)
        self.min_sites = min_sites
        self.update_norm_factor = update_norm_factor
        self.proximal_mu = proximal_mu
        self.last_report: dict = {}
        self.node_ids: list[int] | None = None  # admitted nodes; None: Flower's sampling of all connected

    def configure_train(self, server_round, arrays, config, grid):
        if self.proximal_mu > 0:
            config[P.PROXIMAL_MU] = self.proximal_mu
        if self.node_ids is None:
            return super().configure_train(server_round, arrays, config, grid)
        return self._to_members(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        if self.node_ids is None:
            return super().configure_evaluate(server_round, arrays, config, grid)
        return self._to_members(server_round, arrays, config, MessageType.EVALUATE)

    def _to_members(self, server_round, arrays, config, message_type):
        """One message per admitted, connected node (``node_ids``, set by the server before each round)."""
        config[P.SERVER_ROUND] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, list(self.node_ids), message_type)

    def extend(self, roles: ModelRoles, global_state: dict[str, np.ndarray]) -> None:
        """Continue with an extended model (a site joined): its roles and its global state."""
        self.roles = roles
        self.global_state = dict(global_state)

    # -- checks ---------------------------------------------------------------------------------
    def check_reply(self, content: RecordDict) -> tuple[dict[str, np.ndarray], float, dict, dict]:
        """(arrays, weight, metrics, identity) of a well-formed reply, else RejectedUpdate."""
        if P.ARRAYS not in content.array_records or P.METRICS not in content.metric_records:
            raise RejectedUpdate("reply lacks the arrays or metrics record")
        metrics = dict(content.metric_records[P.METRICS])
        ident = dict(content.config_records[P.SITE]) if P.SITE in content.config_records else {}
        weight = metrics.get(P.NUM_EXAMPLES)
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise RejectedUpdate(f"{P.NUM_EXAMPLES} must be a positive number, got {weight!r}")
        arrays = from_record(content.array_records[P.ARRAYS])
        domain = ident.get(P.DOMAIN_ID)
        expected = set(self.roles.outgoing_keys(int(domain) if domain is not None and self._gated else None))
        if set(arrays) != expected:
            missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
            raise RejectedUpdate(f"keys differ from the expected update: missing {missing[:3]}, extra {extra[:3]}")
        for k, v in arrays.items():
            ref = self.global_state[k]
            if v.shape != ref.shape or v.dtype != ref.dtype:
                raise RejectedUpdate(f"{k}: shape/dtype {v.shape}/{v.dtype} instead of {ref.shape}/{ref.dtype}")
            if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                raise RejectedUpdate(f"{k}: contains NaN or Inf")
        return arrays, float(weight), metrics, ident

    @property
    def _gated(self) -> bool:
        return bool(self.roles.domain_of)

    def update_norm(self, arrays: dict[str, np.ndarray]) -> float:
        return math.sqrt(sum(float(np.sum((v.astype(np.float64) - self.global_state[k]) ** 2))
                             for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)))

    # -- aggregation ----------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        updates, rejected = [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                rejected.append({"node": node, "reason": f"client error: {msg.error.reason}"})
                continue
            try:
                updates.append((node, *self.check_reply(msg.content)))
            except RejectedUpdate as exc:
                rejected.append({"node": node, "reason": str(exc)})
        return self.aggregate_updates(server_round, updates, rejected)

    def aggregate_updates(self, server_round: int, updates: list[tuple], rejected: list[dict] | None = None):
        """Aggregate checked updates ``(node, arrays, weight, metrics, identity)``; updates ``global_state``."""
        accepted, rejected = list(updates), list(rejected or [])
        if len(accepted) >= 3 and self.update_norm_factor > 0:
            norms = [self.update_norm(a[1]) for a in accepted]
            median = float(np.median(norms))
            keep = []
            for entry, norm in zip(accepted, norms):
                if median > 0 and norm > self.update_norm_factor * median:
                    rejected.append({"node": entry[0], "site": entry[4].get(P.SITE_ID),
                                     "reason": f"update norm {norm:.3g} > {self.update_norm_factor} x median {median:.3g}"})
                else:
                    keep.append(entry)
            accepted = keep
        for r in rejected:
            log.warning("round %d: rejected reply from node %s: %s", server_round, r["node"], r["reason"])
        self.last_report = {"accepted": [str(a[4].get(P.SITE_ID, a[0])) for a in accepted], "rejected": rejected,
                            "sites": {str(a[4].get(P.SITE_ID, a[0])): a[3] for a in accepted}}
        if not accepted or len(accepted) < self.min_sites:
            log.warning("round %d: %d usable replies (< %d): global model unchanged", server_round,
                        len(accepted), max(self.min_sites, 1))
            return None, None
        new_state = dict(self.global_state)
        groups = {"shared": self.roles.keys("shared")}
        if self._gated:
            for d in sorted({int(a[4][P.DOMAIN_ID]) for a in accepted if P.DOMAIN_ID in a[4]}):
                groups[f"domain-{d}"] = self.roles.domain_keys(d)
        for keys in groups.values():
            members = [a for a in accepted if keys and set(keys) <= set(a[1])]
            if not members:
                continue
            records = [RecordDict({P.ARRAYS: to_record({k: a[1][k] for k in keys}),
                                   P.METRICS: MetricRecord({P.NUM_EXAMPLES: a[2]})}) for a in members]
            merged = from_record(aggregate_arrayrecords(records, P.NUM_EXAMPLES))
            for k in keys:
                new_state[k] = merged[k].astype(self.global_state[k].dtype)
        self.global_state = new_state
        metrics = self.train_metrics_aggr_fn(
            [RecordDict({P.METRICS: MetricRecord({k: v for k, v in a[3].items() if isinstance(v, (int, float))})})
             for a in accepted], P.NUM_EXAMPLES)
        return to_record(new_state), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        per_site, errors = {}, []
        for msg in replies:
            if msg.has_error():
                errors.append({"node": msg.metadata.src_node_id, "reason": msg.error.reason})
                continue
            ident = dict(msg.content.config_records.get(P.SITE, ConfigRecord()))
            per_site[str(ident.get(P.SITE_ID, msg.metadata.src_node_id))] = dict(msg.content.metric_records[P.METRICS])
        self.last_report = {"sites": per_site, "errors": errors}
        usable = [RecordDict({P.METRICS: MetricRecord({k: v for k, v in m.items()})}) for m in per_site.values()
                  if m.get(P.NUM_EXAMPLES, 0) > 0]
        return self.evaluate_metrics_aggr_fn(usable, P.NUM_EXAMPLES) if usable else None

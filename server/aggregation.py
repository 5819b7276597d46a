"""Role-aware aggregation on Flower's own strategies.

The strategy table (``uharmony.federation.strategies``) names a class of ``flwr.serverapp.strategy`` (FedAvg,
FedProx, ...). :func:`build_strategy` puts :class:`RoleAware` under it: Flower's class configures the
round (FedProx adds ``proximal-mu`` to the config), ``RoleAware`` aggregates shared entries over every
reply and each domain's head parts over that domain's replies only, weighted by training cases
(Flower's ``aggregate_arrayrecords``). Site-local entries never arrive. With differential privacy the
result is wrapped in Flower's server-side fixed-clipping wrapper.

The weights are the coordinator's, not a site's (issue 29, F6): a declared case count is bounded at admission
(by the cap registered with the site's key), and in each average a reply weighs at most ``max-weight-ratio``
x the median weight of the others (:func:`capped_weights`). ``robust-aggregation`` replaces the weighted mean
of a group of 3 or more replies by Flower's coordinate-wise median or trimmed mean (unweighted). Under
differential privacy every reply weighs the same (F7): the noise and the accountant assume the unweighted
mean of the clipped updates. The wrapper (:class:`KeyedFixedClipping`) clips and noises by entry name, so a
UMS-Rep plan that sends part of the model runs under differential privacy too.

Replies reach it only after ``server/replies.py`` has checked them.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

from server.replies import TRAIN_METRICS
from uharmony import protocol as P
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, State

log = logging.getLogger("uharmony.server")
TRIM_BETA = 0.2  # robust-aggregation = "trimmed-mean": the fraction cut at each end (Flower's FedTrimmedAvg default)


def capped_weights(weights: list[float], ratio: float) -> list[float]:
    """Each weight at most ``ratio`` x the median of the others' (a site cannot own an average by the cases it
    declares: with others of median m, its share is at most ratio*m / (ratio*m + their sum)); ``ratio`` 0 or a
    single weight: unchanged."""
    if ratio <= 0 or len(weights) < 2:
        return [float(w) for w in weights]
    return [min(float(w), ratio * statistics.median(weights[:i] + weights[i + 1 :])) for i, w in enumerate(weights)]


def robust_mean(stacked: np.ndarray, method: str) -> np.ndarray:
    """The unweighted coordinate-wise median, or Flower's trimmed mean, of the replies' arrays (axis 0)."""
    return np.median(stacked, axis=0) if method == "median" else trim_mean(stacked, TRIM_BETA)


class RoleAware(FedAvg):
    """Role-aware aggregation, placed under a Flower strategy class by :func:`build_strategy`.

    ``uniform``: every reply weighs the same (differential privacy); ``max_weight_ratio`` and ``robust``: see
    the module's doc."""

    roles: ModelRoles
    global_state: State
    uniform: bool = False
    max_weight_ratio: float = 0.0
    robust: str = ""

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
            if members:
                new_state.update(self._average(keys, members))
        self.global_state = new_state
        weights = self.weights([w for _, w, _ in parsed])
        return ArrayRecord(new_state), self._metrics([metrics for _, _, metrics in parsed], weights)

    def weights(self, declared: list[float]) -> list[float]:
        """The weights replies that declared ``declared`` training cases are averaged with (capped; all the
        same under differential privacy)."""
        return capped_weights([1.0 if self.uniform else float(w) for w in declared], self.max_weight_ratio)

    def _average(self, keys: list[str], members: list[tuple[State, float]]) -> State:
        """The group's entries ``keys`` averaged over ``members`` (arrays, declared weight)."""
        if self.robust and len(members) >= 3:
            return {
                k: torch.from_numpy(
                    np.asarray(robust_mean(np.stack([arrays[k].numpy() for arrays, _ in members]), self.robust))
                ).to(self.global_state[k].dtype)
                for k in keys
            }
        weights = self.weights([w for _, w in members])
        records = [
            RecordDict(
                {P.ARRAYS: ArrayRecord({k: arrays[k] for k in keys}), P.METRICS: MetricRecord({P.NUM_EXAMPLES: w})}
            )
            for (arrays, _), w in zip(members, weights)
        ]
        merged = aggregate_arrayrecords(records, P.NUM_EXAMPLES).to_torch_state_dict()
        return {k: merged[k].to(self.global_state[k].dtype) for k in keys}

    def _metrics(self, metrics: list[dict], weights: list[float]) -> MetricRecord:
        """Each train metric averaged over the replies that carry it (a site may withhold its loss), weighted."""
        out = MetricRecord()
        for key in TRAIN_METRICS:
            having = [(m[key], w) for m, w in zip(metrics, weights) if key in m]
            if having and key != P.NUM_EXAMPLES:
                records = [RecordDict({P.METRICS: MetricRecord({key: v, P.NUM_EXAMPLES: w})}) for v, w in having]
                out[key] = aggregate_metricrecords(records, P.NUM_EXAMPLES)[key]
        return out


class KeyedFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, by entry name: each reply's update is clipped over the entries *it*
    carries (a UMS-Rep plan sends part of the model: phase P the trunk and its reconstruction head, an
    independent plan the decoder and heads), and the Gaussian noise goes to those entries only (a frozen,
    unsent entry must not drift). Flower's own wrapper pairs reply and model arrays by position, which holds
    only when every reply carries every entry. The accounting is Flower's (one Gaussian release per round)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        event = self._pop_pending_event(server_round)
        if not validate_replies(replies, self.num_sampled_clients, strict=self.accountant is not None):
            return None, None
        self._validate_uniform_weights(replies)
        current = {k: np.asarray(v.numpy()) for k, v in self.current_arrays.items()}
        carried: set[str] = set()
        for reply in replies:
            for name, record in reply.content.array_records.items():
                keys = list(record.keys())
                unknown = sorted(set(keys) - set(current))
                if unknown:
                    raise ValueError(f"differential privacy: reply entries {unknown[:3]} are not in the model")
                arrays = record.to_numpy_ndarrays()
                if any(
                    np.any(a != current[k]) for a, k in zip(arrays, keys, strict=True)
                ):  # (Flower divides by the norm)
                    compute_clip_model_update(
                        param1=arrays, param2=[current[k] for k in keys], clipping_norm=self.clipping_norm
                    )
                reply.content[name] = ArrayRecord(dict(zip(keys, (Array(np.asarray(v)) for v in arrays), strict=True)))
                carried |= set(keys)
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        if aggregated:
            state = dict(aggregated.items())
            noisy = [np.asarray(state[k].numpy()) for k in sorted(carried)]
            add_gaussian_noise_inplace(
                noisy, compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
            )
            state.update({k: Array(np.asarray(v)) for k, v in zip(sorted(carried), noisy, strict=True)})
            aggregated = ArrayRecord(state)
            self._compose_release(event)
        return aggregated, metrics


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
    inner.uniform, inner.max_weight_ratio = cfg.dp_noise_multiplier > 0, cfg.max_weight_ratio
    inner.robust = cfg.robust_aggregation
    if cfg.dp_noise_multiplier > 0:
        return KeyedFixedClipping(inner, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, num_sampled_clients=1), inner
    return inner, inner

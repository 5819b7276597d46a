"""Every reply a site sends goes through one checker before anything uses it.

A train reply is rejected, with its reason, for: a client error; missing records; a site or domain
other than the one its node was admitted as; a weight (``num-examples``) that is not a whole number in
[1, the training cases its profile declared]; arrays that cannot be read as NumPy arrays (only NumPy
serialization is accepted); entries other than exactly those its role lets leave the site; a wrong
shape or dtype; NaN or Inf; an update whose norm is out of bounds (``max-relative-update`` x the global
model's norm always; ``update-norm-factor`` x the median of this round's updates with 3 or more
replies, else of the updates accepted in earlier rounds); malformed numbers among its metrics.

An evaluation reply is rejected for the same identity and type errors, and for Dice outside [0, 1],
HD95 negative, or metric names for regions the model does not have. The round goes on without what was
rejected; nothing a site sends can raise in the server: an array is read only after its ``.npy`` header
declared the expected entry's shape and dtype and exactly the bytes that follow it
(``uharmony.federation.wire.read_npy``), and any other error in a reply's handling is that reply's rejection,
with its reason.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Message

from uharmony import protocol as P
from uharmony.federation import wire
from uharmony.federation.federated import ModelRoles, State

TRAIN_METRICS = (P.TRAIN_LOSS, P.STEPS, P.SECONDS, P.NUM_EXAMPLES, P.SKIPPED, P.UPDATE_BYTES)
EVAL_KEY = re.compile(r"(dice|hd95|presence-auroc|presence)-([a-z][a-z0-9]{0,15})-(oracle|gated|expert\d{1,3})")
# UMS-Rep phase P, per noise level (and "s", the scan as acquired, against a noise-free reference)
DENOISE_KEY = re.compile(r"(psnr|ssim)-(noisy|denoised|clean-noisy|clean-denoised)-(\d{1,2}|s)")


class RejectedUpdate(ValueError):
    pass


@dataclass
class Reply:
    """A checked reply: its node, the site and domain that node was admitted as, and its content."""

    node: int
    site: str
    domain: int | None
    arrays: State
    weight: float
    metrics: dict


def _number(value, key: str, low: float = -math.inf, high: float = math.inf) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise RejectedUpdate(f"metric {key!r} must be a finite number in [{low:g}, {high:g}], got {str(value)[:40]!r}")
    return float(value)


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    return torch.empty((), dtype=tensor.dtype).numpy().dtype


def read_arrays(record, reference: State, expected: set[str] | None = None) -> State:
    """The entries of a reply's ArrayRecord as tensors: exactly ``expected`` (default: the record's names,
    each one of ``reference``), each NumPy-serialized and read only after its header declared its reference
    entry's shape and dtype and the bytes that follow it (nothing is allocated before; nothing unpickled)."""
    names = list(record.keys())
    expected = set(names) if expected is None else set(expected)
    unknown = sorted(set(names) - set(reference))
    if set(names) != expected or unknown:
        missing, extra = sorted(expected - set(names)), sorted((set(names) - expected) | set(unknown))
        raise RejectedUpdate(f"keys differ from the expected update: missing {missing[:3]}, extra {extra[:3]}")
    out = {}
    for name in names:
        array = record[name]
        if getattr(array, "stype", None) != wire.NPY:
            stype = str(getattr(array, "stype", type(array).__name__))[:40]
            raise RejectedUpdate(f"{name}: arrays cannot be read as NumPy arrays (serialized as {stype!r})")
        ref = reference[name]
        try:
            out[name] = torch.from_numpy(wire.read_npy(array.data, name, _numpy_dtype(ref), tuple(ref.shape)))
        except wire.WireError as exc:
            raise RejectedUpdate(str(exc)) from None
    return out


def rejection(msg: Message, exc: Exception) -> dict:
    """The record of a rejected reply: its node and the reason (a RejectedUpdate's text, else the error's type
    and text: whatever went wrong with one reply is that reply's rejection)."""
    reason = str(exc) if isinstance(exc, RejectedUpdate) else f"unreadable reply ({type(exc).__name__}: {exc})"
    try:
        node = msg.metadata.src_node_id
    except Exception:  # noqa: BLE001 - a reply without metadata is still counted
        node = None
    return {"node": node, "reason": reason[:500]}


def check_arrays(arrays: dict, reference: dict, roles) -> None:
    """Every array as its reference entry (shape, dtype), finite, and a prototype's variance and reach >= 0."""
    for k, v in arrays.items():
        ref = reference[k]
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise RejectedUpdate(
                f"{k}: shape/dtype {tuple(v.shape)}/{v.dtype} instead of {tuple(ref.shape)}/{ref.dtype}"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RejectedUpdate(f"{k}: contains NaN or Inf")
        if k in roles.nonnegative and bool((v < 0).any()):
            raise RejectedUpdate(f"{k}: a prototype's variance or reach cannot be negative")


def _identity(msg: Message, profile: dict | None, gated: bool) -> tuple[str, int | None]:
    """(site, domain) of the node that sent ``msg``: the admitted one; what the reply claims must agree."""
    content = msg.content
    claim = dict(content.config_records[P.SITE]) if P.SITE in content.config_records else {}
    site = profile["site"] if profile else str(claim.get(P.SITE_ID, msg.metadata.src_node_id))[:63]
    domain = (profile["domain"] if profile else claim.get(P.DOMAIN_ID)) if gated else None
    if profile:
        if P.SITE_ID in claim and claim[P.SITE_ID] != site:
            raise RejectedUpdate(
                f"node {msg.metadata.src_node_id} was admitted as site {site!r} but claims "
                f"{str(claim[P.SITE_ID])[:63]!r}"
            )
        if gated and P.DOMAIN_ID in claim and claim[P.DOMAIN_ID] != domain:
            raise RejectedUpdate(
                f"site {site!r} was admitted in domain {domain} but claims domain {str(claim[P.DOMAIN_ID])[:20]!r}"
            )
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int)):
        raise RejectedUpdate(f"{P.DOMAIN_ID} must be an int, got {str(domain)[:20]!r}")
    return site, domain


class ReplyChecker:
    """``members``: node -> admitted profile (site, domain, train_cases); ``history``: accepted update norms
    of earlier rounds (the checker appends this round's)."""

    def __init__(
        self,
        roles: ModelRoles,
        global_state: State,
        members: dict[int, dict] | None = None,
        update_norm_factor: float = 10.0,
        max_relative_update: float = 10.0,
        pooled: bool = False,
        history: list[float] | None = None,
        reject_unchanged: bool = False,
        sent: set[str] | None = None,
    ) -> None:
        self.roles, self.global_state, self.members = roles, global_state, members or {}
        self.update_norm_factor, self.max_relative_update = update_norm_factor, max_relative_update
        self.pooled = pooled  # the trainer holds every site's data: it sends every global entry
        self.history = history if history is not None else []
        self.reject_unchanged = reject_unchanged  # under DP: clipping divides by the update's norm
        self.sent = sent  # UMS-Rep: the entries the round's plan trains (None: every outgoing entry)

    def _profile(self, msg: Message) -> dict | None:
        profile = self.members.get(msg.metadata.src_node_id)
        if profile is None and self.members:
            raise RejectedUpdate(f"node {msg.metadata.src_node_id} is not a member of this run")
        return profile

    def check(self, msg: Message) -> Reply:
        if msg.has_error():
            raise RejectedUpdate(f"client error: {str(msg.error.reason)[:300]}")
        content = msg.content
        if P.ARRAYS not in content.array_records or P.METRICS not in content.metric_records:
            raise RejectedUpdate("reply lacks the arrays or metrics record")
        profile = self._profile(msg)
        # the pooled trainer answers for every site's data: it is filed as "pooled", not as its own site
        site, domain = ("pooled", None) if self.pooled else _identity(msg, profile, self.roles.gated)
        metrics = dict(content.metric_records[P.METRICS])
        weight = metrics.get(P.NUM_EXAMPLES)
        if self.pooled:
            limit = sum(p["train_cases"] for p in self.members.values()) or math.inf
        else:
            limit = profile["train_cases"] if profile else math.inf
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= limit:
            raise RejectedUpdate(
                f"{P.NUM_EXAMPLES} must be a whole number in [1, {limit:g}] (the training cases "
                f"its profile declared), got {str(weight)[:40]!r}"
            )
        numbers = {k: _number(metrics[k], k) for k in TRAIN_METRICS if k in metrics}
        expected = set(self.roles.global_keys() if self.pooled else self.roles.outgoing_keys(domain))
        if self.sent is not None:
            expected &= self.sent
        arrays = read_arrays(content.array_records[P.ARRAYS], self.global_state, expected)
        check_arrays(arrays, self.global_state, self.roles)
        for k in self.roles.scan_counts & set(arrays):
            if not 0 <= float(arrays[k].max()) <= limit:
                raise RejectedUpdate(f"{k}: a prototype counts at most the {limit:g} declared training scans")
        return Reply(msg.metadata.src_node_id, site, domain, arrays, float(weight), numbers)

    def _norms(self, reply: Reply) -> tuple[float, float]:
        """(update norm, global model norm) over the reply's trained weights (not its statistics, such as a
        domain's prototype: they are checked for their range in :meth:`check`)."""
        keys = [k for k, v in reply.arrays.items() if v.is_floating_point() and k in self.roles.parameters]
        delta = sum(float((reply.arrays[k].double() - self.global_state[k].double()).pow(2).sum()) for k in keys)
        return math.sqrt(delta), math.sqrt(sum(float(self.global_state[k].double().pow(2).sum()) for k in keys))

    def screen(self, replies) -> tuple[list[Message], list[Reply], list[dict]]:
        """(accepted messages, their checked replies, rejections ``{node, site?, reason}``), sorted by site
        so that aggregation sums in the same order whatever order replies arrived in."""
        accepted, rejected = [], []
        for msg in replies:
            try:
                accepted.append((self.check(msg), msg))
            except Exception as exc:  # noqa: BLE001 - nothing one reply carries may end the round
                rejected.append(rejection(msg, exc))
        norms = [self._norms(r) for r, _ in accepted]
        median = (
            statistics.median([n for n, _ in norms])
            if len(norms) >= 3
            else (statistics.median(self.history) if self.history else None)
        )
        keep = []
        for (reply, msg), (norm, model_norm) in zip(accepted, norms):
            reason = None
            if self.reject_unchanged and norm == 0:
                reason = "the update does not change the model (nothing was trained)"
            elif self.max_relative_update > 0 and model_norm > 0 and norm > self.max_relative_update * model_norm:
                reason = (
                    f"update norm {norm:.3g} > {self.max_relative_update} x the global model's norm {model_norm:.3g}"
                )
            elif self.update_norm_factor > 0 and median and norm > self.update_norm_factor * median:
                reason = f"update norm {norm:.3g} > {self.update_norm_factor} x median {median:.3g}"
            if reason:
                rejected.append({"node": reply.node, "site": reply.site, "reason": reason})
            else:
                keep.append((reply, msg))
                self.history.append(norm)
        del self.history[:-50]  # the recent past only
        keep.sort(key=lambda pair: (pair[0].site, pair[0].node))
        return [m for _, m in keep], [r for r, _ in keep], rejected


def check_evaluation(
    msg: Message, profile: dict | None, regions: list[str], record: str = P.METRICS
) -> tuple[str, dict]:
    """(site, metrics) of a well-formed evaluation (the ``record`` metrics of ``msg``), else RejectedUpdate."""
    if msg.has_error():
        raise RejectedUpdate(f"client error: {str(msg.error.reason)[:300]}")
    if record not in msg.content.metric_records:
        raise RejectedUpdate(f"reply lacks the {record!r} metrics record")
    site, _ = _identity(msg, profile, False)
    known = {r.lower() for r in regions}
    metrics = {}
    for key, value in dict(msg.content.metric_records[record]).items():
        match = EVAL_KEY.fullmatch(key)
        if match:
            if match.group(2) not in known:
                raise RejectedUpdate(f"metric {key!r} names a region the model does not have ({sorted(known)})")
            if value != -1:  # -1: the site does not annotate this region
                high = math.inf if match.group(1) == "hd95" else 1.0
                _number(value, key, 0.0, high)
        elif key in (P.NUM_EXAMPLES, P.SKIPPED, P.TYPE_CASES):
            _number(value, key, 0.0)
        elif key in (P.GATE_ACCURACY, P.GATE_WEIGHT, P.GATE_UNSEEN, P.TYPE_ACCURACY):
            _number(value, key, 0.0, 1.0)
        elif DENOISE_KEY.fullmatch(key):
            _number(value, key, -1.0, 1.0) if key.startswith("ssim") else _number(value, key, -200.0, 400.0)
        elif key == P.VAL_LOSS:
            _number(value, key, 0.0)
        elif key == P.INTRINSIC_NOISE:
            _number(value, key, 0.0, 100.0)
        else:
            continue  # unknown numbers are not used
        metrics[key] = float(value) if isinstance(value, float) else value
    cases = metrics.get(P.TYPE_CASES)
    if cases is not None and (cases != int(cases) or cases > metrics.get(P.NUM_EXAMPLES, math.inf)):
        raise RejectedUpdate(f"metric {P.TYPE_CASES!r} = {cases}: a whole number of the site's validation scans")
    if P.TYPE_ACCURACY in metrics and not cases:
        raise RejectedUpdate(f"metric {P.TYPE_ACCURACY!r} without the {P.TYPE_CASES!r} it was measured on")
    return site, metrics

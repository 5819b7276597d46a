"""The scan gate's prototypes, recomputed under the aggregated model before every evaluation.

Training never uses the prototypes (each site trains its own domain's expert), but the gate compares a
scan's descriptor with them, and descriptors move as the model trains: prototypes from an earlier model
route scans by that drift, not by their domain. So before each evaluation (and the final checkpoint) the
server sends the aggregated model in a ``query.prototype`` message to the sites, each answers with its
domain's prototype entries (mean, variance and number of its training scans' descriptors, and their reach:
the largest leave-one-out distance among them, one number about the site's most atypical scan; label-free,
no image, no label), and the server merges them per domain (``uharmony.gating.merge_prototypes``; the
reach: the largest). A reply is checked like a training reply: the admitted identity, only its own
domain's entries, shapes and dtypes, finite values, a variance and reach >= 0 and a count within the
training cases the site declared. A bad reply is rejected, logged and counted; the rest are used.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType

from uharmony import protocol as P
from uharmony.federated import ModelRoles, State
from uharmony.gating import merge_prototypes

from .replies import RejectedUpdate, _identity, check_arrays

QUERY = f"{MessageType.QUERY}.{P.PROTOTYPE_ACTION}"
Part = tuple[torch.Tensor, torch.Tensor, float, float]


def check_prototype_reply(msg: Message, profile: dict | None, roles: ModelRoles, state: State, limit: float) -> dict:
    """{domain: (mean, variance, scans)} of a well-formed prototype reply, else RejectedUpdate.

    ``profile`` None: the pooled trainer (it holds every domain's scans)."""
    if msg.has_error():
        raise RejectedUpdate(f"client error: {str(msg.error.reason)[:300]}")
    if P.ARRAYS not in msg.content.array_records:
        raise RejectedUpdate("prototype reply lacks the arrays record")
    try:
        arrays = dict(msg.content.array_records[P.ARRAYS].to_torch_state_dict())
    except (TypeError, ValueError) as exc:
        raise RejectedUpdate(f"arrays cannot be read ({str(exc)[:200]})") from None
    if profile is None:
        domains = [d for d, keys in roles.prototypes.items() if keys[0] in arrays]
    else:
        domains = [_identity(msg, profile, True)[1]]
    expected = {k for d in domains if d in roles.prototypes for k in roles.prototypes[d]}
    if not domains or set(arrays) != expected:
        extra, missing = sorted(set(arrays) - expected), sorted(expected - set(arrays))
        raise RejectedUpdate(f"prototype keys differ from its domain's: missing {missing[:3]}, extra {extra[:3]}")
    check_arrays(arrays, state, roles)
    out = {}
    for d in domains:
        mean_key, var_key, count_key, reach_key = roles.prototypes[d]
        count = float(arrays[count_key])
        if not count.is_integer() or not 1 <= count <= limit:
            raise RejectedUpdate(f"{count_key}: must count 1 to {limit:g} training scans, got {count:g}")
        out[d] = (arrays[mean_key], arrays[var_key], count, float(arrays[reach_key]))
    return out


def refresh_prototypes(
    grid, nodes: dict[int, dict], roles: ModelRoles, state: State, config: dict, timeout: float, pooled_cases: int = 0
) -> tuple[State, list[dict], list[int]]:
    """Ask ``nodes`` (node id -> admitted profile) for their prototypes under ``state``; returns (the state
    with every answering domain's prototype merged, rejections, domains merged). ``pooled_cases`` > 0: the
    node is the pooled trainer of a centralized run, holding that many training cases of every domain."""
    content = RecordDict({P.ARRAYS: ArrayRecord(state), P.CONFIG: ConfigRecord(config)})
    messages = [Message(content=content, message_type=QUERY, dst_node_id=n) for n in nodes]
    parts: dict[int, list[Part]] = {}
    rejected = []
    for msg in grid.send_and_receive(messages, timeout=timeout):
        node = msg.metadata.src_node_id
        try:
            if node not in nodes:
                raise RejectedUpdate(f"node {node} was not asked")
            profile = None if pooled_cases else nodes[node]
            limit = pooled_cases if pooled_cases else profile.get("train_cases", math.inf)
            for d, part in check_prototype_reply(msg, profile, roles, state, limit).items():
                parts.setdefault(d, []).append(part)
        except RejectedUpdate as exc:
            rejected.append({"node": node, "reason": str(exc)})
    new = dict(state)
    for d, domain_parts in sorted(parts.items()):
        mean, var, count = merge_prototypes([part[:3] for part in domain_parts])
        mean_key, var_key, count_key, reach_key = roles.prototypes[d]
        new[mean_key], new[var_key] = mean, var
        new[count_key] = torch.tensor(count, dtype=state[count_key].dtype)
        # the merged variance adds the spread of the site means, so a site's scans usually lie no farther from
        # the merged prototype than from their own: the largest site reach is kept (0 if a site's is unknown)
        reaches = [part[3] for part in domain_parts]
        new[reach_key] = torch.tensor(0.0 if min(reaches) <= 0 else max(reaches), dtype=state[reach_key].dtype)
    return new, rejected, sorted(parts)

"""The scan gate's prototypes, recomputed under the aggregated model before every evaluation.

Training never uses the prototypes (each site trains its own domain's expert), but the gate compares a
scan's descriptor with them, and descriptors move as the model trains: prototypes from an earlier model
route scans by that drift, not by their domain. So before each evaluation (and the final checkpoint) the
server sends the aggregated model in a ``query.prototype`` message to the sites, each answers with its
domain's prototype entries (mean, variance and number of its training scans' descriptors, and their reach:
the largest leave-one-out distance among them, one number about the site's most atypical scan; label-free,
no image, no label), and the server merges them per domain (``uharmony.model.gating.merge_prototypes``; the
reach: the largest). A reply is checked like a training reply: the admitted identity, only its own
domain's entries, shapes and dtypes, finite values, a variance and reach >= 0 and a count within the
training cases the site declared (itself at most the cap its key is registered with). A bad reply is
rejected, logged and counted; the rest are used.

A well-formed prototype can still be a lie (issue 29, F11): a domain's merged prototype must stay its
domain's (``server/separation.py``), or every reply that made it is rejected and the domain keeps its previous
one. A reach of 0 (unknown) is that domain's alone (``DomainGatedHead.beyond_reach``).
"""

from __future__ import annotations

import logging
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType

from server.replies import RejectedUpdate, _identity, check_arrays, read_arrays, rejection
from server.separation import SPREAD_FACTOR, check_domains, check_move, clip_spreads, known
from uharmony import protocol as P
from uharmony.federation.federated import ModelRoles, State
from uharmony.model.gating import merge_prototypes

log = logging.getLogger("uharmony.server")
QUERY = f"{MessageType.QUERY}.{P.PROTOTYPE_ACTION}"
Part = tuple[torch.Tensor, torch.Tensor, float, float]


def check_prototype_reply(msg: Message, profile: dict | None, roles: ModelRoles, state: State, limit: float) -> dict:
    """{domain: (mean, variance, scans, reach)} of a well-formed prototype reply, else RejectedUpdate.

    ``profile`` None: the pooled trainer (it holds every domain's scans)."""
    if msg.has_error():
        raise RejectedUpdate(f"client error: {str(msg.error.reason)[:300]}")
    if P.ARRAYS not in msg.content.array_records:
        raise RejectedUpdate("prototype reply lacks the arrays record")
    record = msg.content.array_records[P.ARRAYS]
    names = set(record.keys())
    if profile is None:
        domains = [d for d, keys in roles.prototypes.items() if keys[0] in names]
    else:
        domains = [_identity(msg, profile, True)[1]]
    expected = {k for d in domains if d in roles.prototypes for k in roles.prototypes[d]}
    if not domains or names != expected:
        extra, missing = sorted(names - expected), sorted(expected - names)
        raise RejectedUpdate(f"prototype keys differ from its domain's: missing {missing[:3]}, extra {extra[:3]}")
    arrays = read_arrays(record, state, expected)
    check_arrays(arrays, state, roles)
    out = {}
    for d in domains:
        mean_key, var_key, count_key, reach_key = roles.prototypes[d]
        count = float(arrays[count_key])
        if not count.is_integer() or not 1 <= count <= limit:
            raise RejectedUpdate(f"{count_key}: must count 1 to {limit:g} training scans, got {count:g}")
        reason = check_move(d, arrays[mean_key], known(roles, state))
        if reason:
            raise RejectedUpdate(reason)
        out[d] = (arrays[mean_key], arrays[var_key], count, float(arrays[reach_key]))
    return out


def refresh_prototypes(
    grid,
    nodes: dict[int, dict],
    roles: ModelRoles,
    state: State,
    config: dict,
    timeout: float,
    pooled_cases: int = 0,
    send=None,
) -> tuple[State, list[dict], list[int]]:
    """Ask ``nodes`` (node id -> admitted profile) for their prototypes under ``state``; returns (the state
    with every answering domain's prototype merged, rejections, domains merged). ``pooled_cases`` > 0: the
    node is the pooled trainer of a centralized run, holding that many training cases of every domain.
    ``send``: messages -> replies (default: the grid's ``send_and_receive`` within ``timeout``)."""
    content = RecordDict({P.ARRAYS: ArrayRecord(state), P.CONFIG: ConfigRecord(config)})
    messages = [Message(content=content, message_type=QUERY, dst_node_id=n) for n in nodes]
    parts: dict[int, list[Part]] = {}
    nodes_of: dict[int, list[Message]] = {}  # the replies each domain's parts came from
    rejected = []
    replies = send(messages) if send is not None else grid.send_and_receive(messages, timeout=timeout)
    for msg in replies:
        node = msg.metadata.src_node_id
        try:
            if node not in nodes:
                raise RejectedUpdate(f"node {node} was not asked")
            profile = None if pooled_cases else nodes[node]
            limit = pooled_cases if pooled_cases else profile.get("train_cases", math.inf)
            for d, part in check_prototype_reply(msg, profile, roles, state, limit).items():
                parts.setdefault(d, []).append(part)
                nodes_of.setdefault(d, []).append(msg)
        except Exception as exc:  # noqa: BLE001 - whatever one reply carries is that reply's rejection
            rejected.append(rejection(msg, exc))
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
    new, clipped = clip_spreads(roles, new, sorted(parts))
    for d, reason in check_domains(roles, state, new, sorted(parts)).items():  # the domain keeps its prototype
        new.update({k: state[k] for k in roles.prototypes[d]})
        rejected += [rejection(msg, RejectedUpdate(reason)) for msg in nodes_of[d]]
        del parts[d]
    for d in set(clipped) & set(parts):
        log.warning("domain %d: prototype variance clipped (over %g x the domains' median)", d, SPREAD_FACTOR)
    return new, rejected, sorted(parts)

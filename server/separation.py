"""A domain's prototype stays its domain's (issue 29, F11).

Every site receives every domain's prototype with the global model, so a site can send another domain's as
its own: with a copy of domain 0's prototype and a large count, a site alone in domain 2 took half of domain
0's scans for its own expert; with a huge reach (or a huge variance) its domain claimed every scan, and the
"none of these" test was off for all. What a prototype may do from one refresh to the next is bounded here,
in the gate's own metric (the diagonal Mahalanobis distance under the domains' pooled variance):

- it may not move onto another domain: the distance between a domain's new prototype and another domain's
  (previous, or new when the other moved less) may not fall below a quarter of what it was (``SHRINK``);
- a domain's first prototype (a site that joined) may not lie within another domain's reach;
- a domain's reach may not newly cover another domain's prototype (under the domain's own variance, as the
  "none of these" test measures), and a reach that was unknown may not cover every other domain's;
- a domain's variance, which enters the gate's pooled variance for every domain, is clipped per dimension at
  ``SPREAD_FACTOR`` x (the median over the domains + the median domain's mean variance): a variance of 1e30
  would flatten the gate for all.

Domains that are hard to tell apart (two hospitals on near-identical scanners) stay as close as they were:
their separation is stable while the model moves both, so neither check stops them. A domain whose first
prototype lands within another's reach is the exception: it is rejected (logged with its reason) and keeps
no prototype, so the gate does not hand it scans; its expert still serves it by its domain id.
"""

from __future__ import annotations

import torch

from uharmony.federation.federated import ModelRoles, State
from uharmony.model.head import distance2

SHRINK = 4.0  # a squared distance between two domains may fall at most to 1/SHRINK of its previous value
SPREAD_FACTOR = 10.0  # a domain's variance per dimension: at most this x (median over domains + overall mean)
Proto = tuple[torch.Tensor, torch.Tensor, float]  # mean, variance, reach (0: unknown)


def known(roles: ModelRoles, state: State) -> dict[int, Proto]:
    """{domain: (mean, variance, reach)} of the domains that have a prototype in ``state``."""
    out = {}
    for d, (mean_key, var_key, count_key, reach_key) in roles.prototypes.items():
        if float(state[count_key]) > 0:
            out[d] = (state[mean_key].double(), state[var_key].double(), float(state[reach_key]))
    return out


def _pooled(protos: dict[int, Proto]) -> torch.Tensor:
    return torch.stack([v for _, v, _ in protos.values()]).mean(0)


def _covers(proto: Proto, point: torch.Tensor) -> bool:
    mean, var, reach = proto
    return reach > 0 and float(distance2(point, mean, var)) <= reach


def check_move(domain: int, mean: torch.Tensor, previous: dict[int, Proto]) -> str | None:
    """Why one site's new prototype mean of ``domain`` is not that domain's (None: it may be): it moved at least
    half-way onto another domain's previous prototype, or, as the domain's first, lies within another's reach."""
    others = {e: p for e, p in previous.items() if e != domain}
    if not others:
        return None
    m = mean.double()
    if domain not in previous:
        inside = [e for e, p in others.items() if _covers(p, m)]
        return f"the first prototype of domain {domain} lies within domain {inside[0]}'s reach" if inside else None
    pooled, own = _pooled(previous), previous[domain][0]
    for e, (p, _, _) in others.items():
        before, after = float(distance2(own, p, pooled)), float(distance2(m, p, pooled))
        if after < before / SHRINK:
            return (
                f"the prototype of domain {domain} moves onto domain {e}'s: their distance falls from {before:.3g} "
                f"to {after:.3g}"
            )
    return None


def check_domains(roles: ModelRoles, before: State, after: State, updated) -> dict[int, str]:
    """{domain: why its merged prototype in ``after`` is refused} for the ``updated`` domains, against the
    prototypes of ``before`` (the previous refresh) and the other domains' in ``after``."""
    previous, current = known(roles, before), known(roles, after)
    pooled = _pooled(previous) if previous else None
    refused = {}
    for d in updated:
        if d not in current:
            continue
        new, others = current[d], {e: p for e, p in current.items() if e != d}
        for e, (c, _, _) in others.items():
            if pooled is None or d not in previous or e not in previous:
                continue
            start = float(distance2(previous[d][0], previous[e][0], pooled))
            moved_d = float(distance2(new[0], previous[d][0], pooled))
            moved_e = float(distance2(c, previous[e][0], pooled))
            if float(distance2(new[0], c, pooled)) < start / SHRINK and moved_d > moved_e:
                refused[d] = f"the prototype of domain {d} moves onto domain {e}'s (which moved less)"
                break
            if previous[d][2] > 0 and _covers(new, c) and not _covers(previous[d], previous[e][0]):
                refused[d] = f"the reach of domain {d} newly covers domain {e}'s prototype"
                break
        unknown_before = d not in previous or previous[d][2] <= 0
        if (
            d not in refused
            and unknown_before
            and len(others) >= 2
            and all(_covers(new, c) for c, _, _ in others.values())
        ):
            refused[d] = f"the reach of domain {d} covers every other domain's prototype"
    return refused


def clip_spreads(roles: ModelRoles, state: State, updated) -> tuple[State, list[int]]:
    """``state`` with the variance of each ``updated`` domain clipped per dimension at ``SPREAD_FACTOR`` x (the
    median over the domains with a prototype + the median of their mean variances), with 3 or more such
    domains; returns (state, the domains clipped)."""
    current = known(roles, state)
    if len(current) < 3:
        return state, []
    spreads = torch.stack([v for _, v, _ in current.values()])
    limit = SPREAD_FACTOR * (spreads.median(0).values + spreads.mean(1).median())  # robust to one domain
    new, clipped = dict(state), []
    for d in updated:
        key = roles.prototypes[d][1]
        if d in current and bool((current[d][1] > limit).any()):
            new[key] = torch.minimum(current[d][1], limit).to(state[key].dtype)
            clipped.append(d)
    return new, clipped

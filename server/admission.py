"""Which SuperNodes take part in the run: discovery, the profile query, identity, and the join decision.

Before every round the server looks for SuperNodes it has not admitted yet and asks each for its
profile (a ``query.profile`` message: site id, domain id, modality names, annotated region names,
number of training cases; never data or statistics). A ready, well-formed profile is admitted; the
server then extends the model for whatever the site brings (``uharmony.federation.federated.extend_global_model``)
unless ``extend-on-join`` is off.

With a site registry (a deployment), a node is asked only if the key it authenticated with is
registered for a site, and its profile must name that site and that site's domain: a node cannot speak
for another site or choose its domain, and it may declare at most the training cases registered with its
key (``uharmony-coordinator register --max-cases``): its weight in the average is the coordinator's to bound.
A node that does not answer within ``profile-timeout`` seconds, or answers badly, is asked again next
round, and refused after ``MAX_QUERY_FAILURES`` such rounds.

Without a registry any node is admitted as whatever site its profile names, which is right for a simulation
and wrong where the nodes authenticate with keys: :func:`check_binding` refuses such a run unless
``allow-unregistered`` is set.
"""

from __future__ import annotations

import logging
import re
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from server.registry import MAX_CASES, SiteRegistry, is_public_key
from uharmony import protocol as P

log = logging.getLogger("uharmony.server")
QUERY = f"{MessageType.QUERY}.{P.PROFILE_ACTION}"
MAX_QUERY_FAILURES = 3
MAX_MODALITIES, MAX_REGIONS, MAX_DOMAINS = 16, 16, 256  # bounds on what one joining site can make the model grow
MAX_TRAIN_CASES = MAX_CASES  # a site's declared case count bounds the weight of its updates
SITE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MODALITY = re.compile(r"[a-z][a-z0-9]{0,15}")
_REGION = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}")


class BadProfile(ValueError):
    pass


class UnboundRun(RuntimeError):
    """A run without a site registry on a grid whose nodes authenticate with public keys."""


def check_binding(grid: Grid, registry: SiteRegistry | None, allow_unregistered: bool) -> None:
    """Refuse to run without ``site-registry`` where the grid's nodes carry public keys (SuperNode
    authentication is on, so each key is a site) unless ``allow-unregistered`` is set. (Flower's simulation
    engine gives its nodes random bytes, not keys.)"""
    if registry is not None or allow_unregistered:
        return
    keyed = [info.node_id for info in grid.get_nodes() if is_public_key(getattr(info, "public_key", b""))]
    if keyed:
        raise UnboundRun(
            f"run config: 'site-registry' is empty, but {len(keyed)} node(s) authenticate with public keys: without "
            "the registry any node would be admitted as whatever site and domain it names. Pass site-registry "
            "(uharmony-coordinator run does), or set allow-unregistered = true"
        )


def _names(value, key: str, pattern: re.Pattern, limit: int) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else []
    bad = [n for n in names if not pattern.fullmatch(n)]
    if not names or bad or len({n.lower() for n in names}) != len(names) or len(names) > limit:
        raise BadProfile(
            f"profile {key!r} must list 1-{limit} names matching {pattern.pattern}, distinct "
            f"whatever their case, got {str(value)[:80]!r}"
        )
    return names


def _int(record: dict, key: str, low: int, high: int) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadProfile(f"profile {key!r} must be an int in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def parse_profile(record: dict) -> dict:
    """Check a profile reply; returns it as plain Python or raises BadProfile naming the key."""
    site = record.get(P.SITE_ID)
    if not isinstance(site, str) or not SITE_ID.fullmatch(site):
        raise BadProfile(f"profile {P.SITE_ID!r} must be 1-63 letters, digits, '.', '_' or '-', got {str(site)[:40]!r}")
    ready = record.get(P.READY, True)
    if not isinstance(ready, bool):
        raise BadProfile(f"profile {P.READY!r} must be a bool, got {str(ready)[:20]!r}")
    labelled = record.get(P.LABELLED, True)
    if not isinstance(labelled, bool):
        raise BadProfile(f"profile {P.LABELLED!r} must be a bool, got {str(labelled)[:20]!r}")
    if not labelled and record.get(P.REGIONS, "") != "":
        raise BadProfile(f"profile {P.REGIONS!r} must be empty for a label-free site ({P.LABELLED} false)")
    return {
        "site": site,
        "domain": _int(record, P.DOMAIN_ID, 0, MAX_DOMAINS - 1),
        "train_cases": _int(record, P.TRAIN_CASES, 0, MAX_TRAIN_CASES),
        "ready": ready,
        "labelled": labelled,
        "modalities": _names(record.get(P.MODALITIES), P.MODALITIES, _MODALITY, MAX_MODALITIES),
        "regions": _names(record.get(P.REGIONS), P.REGIONS, _REGION, MAX_REGIONS) if labelled else [],
    }


def check_regions(profile: dict, model_regions: list[str]) -> None:
    """A new region may not differ from the model's only by case (metric keys are lower case)."""
    known = {r.lower(): r for r in model_regions}
    clash = [r for r in profile["regions"] if r.lower() in known and r != known[r.lower()]]
    if clash:
        raise BadProfile(f"profile {P.REGIONS!r}: {clash} differ only by case from the model's {model_regions}")


class Admission:
    """The run's members (node id -> profile) and the nodes refused for good (node id -> reason)."""

    def __init__(
        self, registry: SiteRegistry | None = None, timeout: float = 120.0, allow_unregistered: bool = True
    ) -> None:
        self.members: dict[int, dict] = {}
        self.refused: dict[int, str] = {}
        self.failures: dict[int, int] = {}
        self.registry, self.timeout, self.allow_unregistered = registry, timeout, allow_unregistered

    def online_members(self, grid: Grid) -> list[int]:
        online = set(grid.get_node_ids())
        return [n for n in self.members if n in online]

    def wait_for_nodes(self, grid: Grid, minimum: int, timeout: float, settle: float = 0.5) -> None:
        """Before the first admission: wait (like Flower's node sampling) for ``minimum`` connected nodes, then
        until no node has connected for ``settle`` seconds (a simulation registers its nodes after the
        ServerApp has started; a round admitted from half of them would grow the model later)."""
        deadline, last_log = time.time() + timeout, 0.0
        count, stable_since = -1, time.time()
        while time.time() < deadline:
            now_count = len(self._eligible(grid))
            if now_count != count:
                count, stable_since = now_count, time.time()
            if count >= minimum and time.time() - stable_since >= settle:
                return
            if count < minimum and time.time() - last_log > 30:
                log.info("waiting for SuperNodes: %d connected, %d needed", count, minimum)
                last_log = time.time()
            time.sleep(0.1)

    def _eligible(self, grid: Grid) -> list[int]:
        """Connected nodes that may take part: with a registry, those whose key is registered for a site."""
        if self.registry is None:
            return list(grid.get_node_ids())
        return [info.node_id for info in grid.get_nodes() if self.registry.lookup(info.public_key) is not None]

    def _registered(self, grid: Grid, nodes: list[int]) -> dict[int, object]:
        """node -> its registry entry; nodes whose key is not registered for a site are refused now."""
        keys = {info.node_id: info.public_key for info in grid.get_nodes() if info.node_id in set(nodes)}
        entries = {}
        for node in nodes:
            entry = self.registry.lookup(keys.get(node, b""))
            if entry is None:
                self.refuse(node, "its key is not registered for any site (uharmony-coordinator register)")
            else:
                entries[node] = entry
        return entries

    def _failed(self, node: int, reason: str) -> str:
        self.failures[node] = self.failures.get(node, 0) + 1
        if self.failures[node] >= MAX_QUERY_FAILURES:
            return self.refuse(node, f"{reason} ({self.failures[node]} failed queries: not asked again)")
        return reason

    def candidates(self, grid: Grid, server_round: int) -> tuple[list[tuple[int, dict]], list[dict]]:
        """Ask every new node for its profile. Returns (ready profiles sorted by domain and site, events)
        where events record refused nodes, failed or malformed queries and nodes that are not ready yet."""
        new = [n for n in grid.get_node_ids() if n not in self.members and n not in self.refused]
        if not new:
            return [], []
        check_binding(grid, self.registry, self.allow_unregistered)  # nodes that connected after the start too
        events = []
        entries = self._registered(grid, new) if self.registry is not None else None
        if entries is not None:
            events += [
                {"event": "join-refused", "node": n, "reason": self.refused[n]} for n in new if n in self.refused
            ]
            new = [n for n in new if n in entries]
        content = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round})})
        replies = grid.send_and_receive(
            [Message(content=content, message_type=QUERY, dst_node_id=n) for n in new], timeout=self.timeout
        )
        answered, ready = set(), []
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in new or node in answered:
                continue
            answered.add(node)
            try:
                if msg.has_error():
                    raise BadProfile(f"profile query failed: {str(msg.error.reason)[:300]}")
                if P.PROFILE not in msg.content.config_records:
                    raise BadProfile("reply lacks the profile record")
                profile = parse_profile(dict(msg.content.config_records[P.PROFILE]))
                entry = entries.get(node) if entries is not None else None
                if entry is not None and (profile["site"], profile["domain"]) != (entry.site, entry.domain):
                    raise BadProfile(
                        f"its key is registered for site {entry.site!r} (domain {entry.domain}), but its "
                        f"profile says {profile['site']!r} (domain {profile['domain']})"
                    )
                if entry is not None and entry.max_cases and profile["train_cases"] > entry.max_cases:
                    raise BadProfile(
                        f"profile {P.TRAIN_CASES!r} declares {profile['train_cases']} training cases, but the key of "
                        f"site {entry.site!r} is registered for at most {entry.max_cases} "
                        "(uharmony-coordinator register --max-cases)"
                    )
            except Exception as exc:  # noqa: BLE001 - a malformed reply is that node's failed query, not the run's
                reason = (
                    str(exc) if isinstance(exc, BadProfile) else f"unreadable profile ({type(exc).__name__}: {exc})"
                )
                events.append({"event": "join-error", "node": node, "reason": self._failed(node, reason[:500])})
                continue
            if not profile["ready"]:
                events.append({"event": "join-pending", "node": node, "site": profile["site"]})
                continue
            ready.append((node, profile))
        for node in sorted(set(new) - answered):
            reason = self._failed(node, f"no answer to the profile query within {self.timeout:g} s")
            events.append({"event": "join-error", "node": node, "reason": reason})
        online = set(grid.get_node_ids())
        for old in [n for n in self.members if n not in online]:  # a site whose node is gone may come back
            del self.members[old]
        taken = {p["site"] for p in self.members.values()}
        for node, profile in list(ready):  # one node per site: a second one claiming a member's site is refused
            if profile["site"] in taken:
                ready.remove((node, profile))
                reason = self.refuse(node, f"site {profile['site']!r} is already a member through another node")
                events.append({"event": "join-refused", "node": node, "reason": reason})
            taken.add(profile["site"])
        ready.sort(key=lambda item: (item[1]["domain"], item[1]["site"], item[0]))
        return ready, events

    def admit(self, node: int, profile: dict) -> None:
        self.members[node] = profile
        self.failures.pop(node, None)

    def refuse(self, node: int, reason: str) -> str:
        self.refused[node] = reason
        log.warning("node %s refused: %s", node, reason)
        return reason

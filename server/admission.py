"""Which SuperNodes take part in the run: discovery, the profile query, and the join decision.

Before every round the server looks for SuperNodes it has not admitted yet and asks each for its
profile (a ``query.profile`` message: site id, domain id, modality names, annotated region names,
number of training cases; never data or statistics). A ready, well-formed profile is admitted; the
server then extends the model for whatever the site brings (``uharmony.federated.extend_global_model``)
unless ``extend-on-join`` is off. Nodes that are not ready yet, or whose query failed, are asked again
next round (a failing node at most ``MAX_QUERY_FAILURES`` times).
"""

from __future__ import annotations

import logging
import re
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.serverapp import Grid

from uharmony import protocol as P

log = logging.getLogger("uharmony.server")
QUERY = f"{MessageType.QUERY}.{P.PROFILE_ACTION}"
MAX_QUERY_FAILURES = 3
MAX_MODALITIES, MAX_REGIONS, MAX_DOMAINS = 16, 16, 256  # bounds on what one joining site can make the model grow
_MODALITY = re.compile(r"[a-z][a-z0-9]*")
_REGION = re.compile(r"[A-Za-z][A-Za-z0-9]*")


class BadProfile(ValueError):
    pass


def _names(value, key: str, pattern: re.Pattern, limit: int) -> list[str]:
    names = [n.strip() for n in str(value).split(",") if n.strip()] if value is not None else []
    bad = [n for n in names if not pattern.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names) or len(names) > limit:
        raise BadProfile(
            f"profile {key!r} must list 1-{limit} distinct names matching {pattern.pattern}, got {value!r}"
        )
    return names


def parse_profile(record: dict) -> dict:
    """Check a profile reply; returns it as plain Python or raises BadProfile naming the key."""
    site = str(record.get(P.SITE_ID, "")).strip()
    if not site:
        raise BadProfile(f"profile lacks {P.SITE_ID!r}")
    domain = record.get(P.DOMAIN_ID)
    if isinstance(domain, bool) or not isinstance(domain, int) or not 0 <= domain < MAX_DOMAINS:
        raise BadProfile(f"profile {P.DOMAIN_ID!r} must be an int in [0, {MAX_DOMAINS}), got {domain!r}")
    cases = record.get(P.TRAIN_CASES)
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 0:
        raise BadProfile(f"profile {P.TRAIN_CASES!r} must be a non-negative int, got {cases!r}")
    return {
        "site": site,
        "domain": domain,
        "train_cases": cases,
        "ready": bool(record.get(P.READY, True)),
        "modalities": _names(record.get(P.MODALITIES), P.MODALITIES, _MODALITY, MAX_MODALITIES),
        "regions": _names(record.get(P.REGIONS), P.REGIONS, _REGION, MAX_REGIONS),
    }


class Admission:
    """The run's members (node id -> profile) and the nodes refused for good (node id -> reason)."""

    def __init__(self) -> None:
        self.members: dict[int, dict] = {}
        self.refused: dict[int, str] = {}
        self.failures: dict[int, int] = {}

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
            now_count = len(list(grid.get_node_ids()))
            if now_count != count:
                count, stable_since = now_count, time.time()
            if count >= minimum and time.time() - stable_since >= settle:
                return
            if count < minimum and time.time() - last_log > 30:
                log.info("waiting for SuperNodes: %d connected, %d needed", count, minimum)
                last_log = time.time()
            time.sleep(0.05)

    def candidates(self, grid: Grid, server_round: int, timeout: float) -> tuple[list[tuple[int, dict]], list[dict]]:
        """Ask every new node for its profile. Returns (ready profiles sorted by domain and site, events)
        where events record failed or malformed queries and nodes that are not ready yet."""
        new = [n for n in grid.get_node_ids() if n not in self.members and n not in self.refused]
        if not new:
            return [], []
        content = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: server_round})})
        replies = grid.send_and_receive(
            [Message(content=content, message_type=QUERY, dst_node_id=n) for n in new], timeout=timeout
        )
        ready, events = [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            try:
                if msg.has_error():
                    raise BadProfile(f"profile query failed: {msg.error.reason}")
                if P.PROFILE not in msg.content.config_records:
                    raise BadProfile("reply lacks the profile record")
                profile = parse_profile(dict(msg.content.config_records[P.PROFILE]))
            except BadProfile as exc:
                self.failures[node] = self.failures.get(node, 0) + 1
                reason = str(exc)
                if self.failures[node] >= MAX_QUERY_FAILURES:
                    reason = self.refuse(node, f"{reason} ({self.failures[node]} failed queries: not asked again)")
                events.append({"event": "join-error", "node": node, "reason": reason})
                continue
            if not profile["ready"]:
                events.append({"event": "join-pending", "node": node, "site": profile["site"]})
                continue
            ready.append((node, profile))
        ready.sort(key=lambda item: (item[1]["domain"], item[1]["site"], item[0]))
        return ready, events

    def admit(self, node: int, profile: dict) -> None:
        self.members[node] = profile
        self.failures.pop(node, None)

    def refuse(self, node: int, reason: str) -> str:
        self.refused[node] = reason
        log.warning("node %s refused: %s", node, reason)
        return reason

"""Views of a run's grid: one that packs model entries into one array per message, one that polls for
replies often, and one restricted to a set of nodes.

Flower's deployment grid sleeps 3 s between pulls for replies; a round waits for every site's reply several
times (profiles, train, prototypes, evaluation), so :class:`PollingGrid` pulls every ``poll`` seconds with
the grid's own ``push_messages`` / ``pull_messages``.

:func:`gather` does the same on any grid and can close early: once a quorum of replies is in, the others get
a grace period (``straggler-seconds``), after which they are late: one slow site no longer holds every round
until ``round-timeout`` (issue 29, F13).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, RecordDict
from flwr.serverapp import Grid

from uharmony import protocol as P
from uharmony.federation import wire

POLL_SECONDS = 0.2
STRAGGLER_MIN_SECONDS = 60.0  # automatic grace (straggler-seconds = 0): at least this, else the time to quorum


def gather(
    grid: Grid, messages, timeout: float | None, quorum: int = 0, straggler: float = -1.0, poll: float = POLL_SECONDS
) -> tuple[list[Message], list[int]]:
    """Push ``messages``, then pull every ``poll`` s until every reply is in or ``timeout`` s have passed, or,
    with ``quorum`` > 0 and ``straggler`` >= 0, a grace period has passed since ``quorum`` replies were in:
    ``straggler`` s, or with 0 the time the quorum took (at least ``STRAGGLER_MIN_SECONDS``), so a round lasts
    at most about twice its quorum's time. Returns (replies, the nodes that had not answered by then)."""
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    node_of = {i: m.metadata.dst_node_id for i, m in zip(ids, messages)}
    waiting, replies = set(ids), []
    start = time.time()
    end = start + (timeout if timeout is not None else 0.0)
    close = None  # when the stragglers' grace ends
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies.extend(got)
        waiting.difference_update(m.metadata.reply_to_message_id for m in got)
        now = time.time()
        if close is None and quorum > 0 and straggler >= 0 and len(replies) >= quorum:
            close = now + (straggler if straggler > 0 else max(STRAGGLER_MIN_SECONDS, now - start))
        if not waiting or (timeout is not None and now >= end) or (close is not None and now >= close):
            break
        time.sleep(poll)
    return replies, sorted(node_of[i] for i in waiting if i in node_of)


def quorum(cfg, asked: int) -> int:
    """Replies after which the others get a grace period: ``min-sites``, and at least a majority of those asked."""
    return min(asked, max(cfg.min_sites, asked // 2 + 1))


class DelegatingGrid(Grid):
    """Hands every call to the grid it wraps."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> list[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)


class PollingGrid(DelegatingGrid):
    """Flower's ``send_and_receive`` with a short pull interval (the ServerApp wraps the run's grid in it)."""

    def __init__(self, grid: Grid, poll: float = POLL_SECONDS) -> None:
        super().__init__(grid)
        self._poll = poll

    def send_and_receive(self, messages, *, timeout=None):
        """Push, then pull every ``poll`` s until every reply is in or ``timeout`` s have passed."""
        return gather(self, messages, timeout, poll=self._poll)[0]


WIRE_ERROR = 10  # the Error code of a reply whose packed arrays could not be read


class PackingGrid(DelegatingGrid):
    """Sends each message's ``ARRAYS`` record packed (``uharmony.federation.wire``: one array instead of one per
    entry) and restores the arrays of packed replies. A reply whose packed record is malformed becomes
    an error reply naming the problem, screened out and counted like any other; plain replies pass."""

    def push_messages(self, messages):
        return self._grid.push_messages(packed(messages))

    def pull_messages(self, message_ids):
        return [unpacked(m) for m in self._grid.pull_messages(message_ids)]

    def send_and_receive(self, messages, *, timeout=None):
        return [unpacked(m) for m in self._grid.send_and_receive(packed(messages), timeout=timeout)]


def packed(messages) -> list[Message]:
    """The messages, each with its ``ARRAYS`` record packed."""
    messages = list(messages)
    # one packing per distinct record (Flower's strategies give every message the same one); the cache holds
    # each record, so that no id is reused while it runs
    cache: dict[int, tuple[ArrayRecord, ArrayRecord, ConfigRecord]] = {}
    for msg in messages:
        if msg.has_content() and P.ARRAYS in msg.content.array_records:
            record = msg.content.array_records[P.ARRAYS]
            if id(record) not in cache:
                buffer, manifest = wire.pack({k: v.numpy() for k, v in record.items()})
                cache[id(record)] = (
                    record,
                    ArrayRecord({wire.PACKED: Array(buffer)}),
                    ConfigRecord({wire.MANIFEST: manifest}),
                )
            arrays, manifest = cache[id(record)][1:]  # a new RecordDict: messages may share one
            msg.content = RecordDict({**dict(msg.content), P.ARRAYS: arrays, P.WIRE: manifest})
    return messages


def unpacked(msg: Message) -> Message:
    """``msg`` with its packed ``ARRAYS`` restored, or an error reply saying why they cannot be."""
    if not msg.has_content() or P.WIRE not in msg.content.config_records:
        return msg
    content = msg.content
    try:
        arrays = wire.unpack_message_records(content.array_records, content.config_records)
    except Exception as exc:  # noqa: BLE001 - whatever one reply carries is that reply's error, not the run's
        reason = str(exc) if isinstance(exc, wire.WireError) else f"{type(exc).__name__}: {exc}"
        return Message(error=Error(WIRE_ERROR, f"packed arrays: {reason[:500]}"), metadata=msg.metadata)
    content[P.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    del content[P.WIRE]
    return msg


class MembersGrid(DelegatingGrid):
    """The grid seen through a set of nodes, so that Flower's strategies sample only those."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._nodes = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

"""Views of a run's grid: one that polls for replies often, and one restricted to a set of nodes.

Flower's deployment grid sleeps 3 s between pulls for replies; a round waits for every site's reply several
times (profiles, train, prototypes, evaluation), so :class:`PollingGrid` pulls every ``poll`` seconds with
the grid's own ``push_messages`` / ``pull_messages``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.2


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
        waiting = set(self.push_messages(messages))
        end = time.time() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or (timeout is not None and time.time() >= end):
                break
            time.sleep(self._poll)
        return replies


class MembersGrid(DelegatingGrid):
    """The grid seen through a set of nodes, so that Flower's strategies sample only those."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._nodes = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

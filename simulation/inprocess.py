"""The in-process transport: Flower's ``Grid`` API served by calling the ClientApp in this process.

The round engine (``server.rounds``) and the ClientApp (``client.client_app``) run exactly as under
Flower; only the carrying of messages differs: no SuperLink, no Ray workers, no serialization over
a wire. Each simulated node keeps its own ``Context`` (and so its in-memory state) for the whole run,
as Flower's simulation engine does. A ClientApp error becomes an error reply, as it would under Flower.

The benchmark trains through this grid, so its numbers are the product's numbers; the Flower/in-process
time ratio measures what the Flower runtime adds.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("uharmony.simulation")
CLIENT_APP_ERROR = 0  # Flower's generic ClientApp exception code


class InProcessGrid(Grid):
    """``node_configs``: one Flower node config per simulated SuperNode (e.g. ``{"partition-id": 0}``)."""

    def __init__(
        self, client_app: ClientApp, node_configs: Iterable[dict], run_config: dict | None = None, run_id: int = 1
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        # who is sending: the server's task of this run (what Flower's own in-process runner sets, too)
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID
        self.contexts = {
            1000 + i: Context(run_id, 1000 + i, dict(nc), RecordDict(), dict(run_config or {}))
            for i, nc in enumerate(node_configs)
        }
        self._replies: dict[str, Message] = {}
        self.messages_sent = 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            context = self.contexts.get(msg.metadata.dst_node_id)
            if context is None:
                continue  # like a message to a node that is gone: no reply
            try:
                reply = self.client_app(msg, context)
            except Exception as exc:  # noqa: BLE001 - a ClientApp error is a reply, as under Flower
                log.warning("node %s: ClientApp error:\n%s", msg.metadata.dst_node_id, traceback.format_exc())
                reply = Message(Error(CLIENT_APP_ERROR, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self._replies[msg.metadata.message_id] = reply
            self.messages_sent += 1
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

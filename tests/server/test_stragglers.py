"""Issue 29, F13: one slow site no longer holds every round until ``round-timeout``: once a quorum has replied,
the others get the stragglers' grace (``straggler-seconds``), and a site still missing then is late: counted,
logged and left out of the round, which goes on."""

import threading
import time
from uuid import uuid4

from flwr.app import ConfigRecord, Error, Message, RecordDict

from client.client_app import make_app
from server.rounds import run_server
from simulation.inprocess import InProcessGrid
from tests.conftest import tiny_overrides
from uharmony import protocol as P
from uharmony.records.runlog import RunLog


class ThreadedGrid(InProcessGrid):
    """Replies arrive when they are ready, as through a SuperLink: each message is answered in a thread of its
    own (the ClientApp runs one message at a time), and a ``slow`` node's replies to ``held`` messages are held
    back until ``release`` is set."""

    def __init__(self, *args, slow=(), held=("train",), **kwargs):
        super().__init__(*args, **kwargs)
        self.slow, self.held, self.release, self.threads = set(slow), set(held), threading.Event(), []
        self._work, self._lock = threading.Lock(), threading.Lock()

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            context = self.contexts.get(msg.metadata.dst_node_id)
            if context is not None:
                thread = threading.Thread(target=self._answer, args=(msg, context), daemon=True)
                thread.start()
                self.threads.append(thread)
                ids.append(msg.metadata.message_id)
        return ids

    def _answer(self, msg, context):
        with self._work:
            try:
                reply = self.client_app(msg, context)
            except Exception as exc:  # noqa: BLE001 - a ClientApp error is a reply, as under Flower
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
        if msg.metadata.message_type in self.held and msg.metadata.dst_node_id in self.slow:
            self.release.wait(timeout=300)
        with self._lock:
            self._replies[msg.metadata.message_id] = reply

    def pull_messages(self, message_ids):
        with self._lock:
            return super().pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):  # Flower's: every reply, or the timeout
        waiting, replies, end = set(self.push_messages(messages)), [], time.time() + (timeout or 0.0)
        while waiting and (timeout is None or time.time() < end):
            got = self.pull_messages(waiting)
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            time.sleep(0.05)
        return replies

    def finish(self):
        self.release.set()
        for thread in self.threads:
            thread.join(timeout=300)


def test_a_slow_site_is_late_after_the_grace_and_the_round_goes_on(tiny_federation, tmp_path):
    run_dir = tmp_path / "run"
    over = {
        k.replace("_", "-"): v
        for k, v in tiny_overrides(
            tiny_federation, run_dir, num_server_rounds=2, straggler_seconds=0.5, round_timeout=600.0
        ).items()
    }
    grid = ThreadedGrid(make_app(), [{"partition-id": i} for i in range(4)], over, slow={1003})
    try:
        t0 = time.time()
        run_server(grid, over)
        seconds = time.time() - t0
    finally:
        grid.finish()
    recs = RunLog(run_dir).records()
    trains = [r for r in recs if r.get("event") == "train"]
    assert [r["late"] for r in trains] == [["4"], ["4"]]  # the slow node is site 4: counted in each round
    assert all(sorted(r["sites"]) == ["1", "2", "3"] for r in trains)
    assert seconds < 300 and RunLog(run_dir).done() is not None  # nowhere near round-timeout (600 s)


def test_gather_closes_after_the_grace_or_waits_until_the_timeout(tiny_federation, tmp_path):
    """``gather`` on its own: with ``straggler-seconds`` the slow node is late after the grace; with -1 (the
    behaviour before) the call waits for it until the timeout."""
    from server.grids import gather

    over = tiny_overrides(tiny_federation, tmp_path / "run")  # (the sites' state folders go there)
    grid = ThreadedGrid(make_app(), [{"partition-id": i} for i in range(2)], over, slow={1001}, held={"query.profile"})

    def queries():
        return [
            Message(RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})}), n, "query.profile") for n in (1000, 1001)
        ]

    try:
        t0 = time.time()
        replies, late = gather(grid, queries(), timeout=60.0, quorum=1, straggler=0.3, poll=0.05)
        assert time.time() - t0 < 30 and len(replies) == 1 and late == [1001]
        t0 = time.time()
        replies, late = gather(grid, queries(), timeout=2.0, quorum=1, straggler=-1.0, poll=0.05)
        assert time.time() - t0 >= 2.0 and len(replies) == 1 and late == [1001]
    finally:
        grid.finish()

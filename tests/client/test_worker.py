"""The site worker answers a forwarded message as the ClientApp would in-process, and only for its own code."""

import socket
import threading
import time

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client import worker
from client.client_app import make_app
from simulation.inprocess import InProcessGrid
from tests.conftest import tiny_overrides
from uharmony import protocol as P


def _profile_query(grid):
    content = RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1})})
    msg = grid.create_message(content, f"query.{P.PROFILE_ACTION}", 1000, "1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def test_a_forwarded_message_gets_the_in_process_answer(tiny_federation, tmp_path, monkeypatch):
    run_config = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, tmp_path / "run").items()}
    grid = InProcessGrid(make_app(), [{"partition-id": 1}], run_config)  # the sender's identity, a context
    context = grid.contexts[1000]
    sock = tmp_path / "worker.sock"
    threading.Thread(target=worker.serve, args=(sock,), daemon=True).start()
    deadline = time.time() + 60
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"  # only the site's user can connect

    with pytest.raises(SystemExit, match="another worker"):  # one worker per state folder
        worker.serve(sock)

    forwarded = worker.call(str(sock), _profile_query(grid), context)
    monkeypatch.delenv(worker.SOCKET_ENV, raising=False)
    direct = make_app()(_profile_query(grid), Context(1, 1000, {"partition-id": 1}, RecordDict(), run_config))
    assert dict(forwarded[P.PROFILE]) == dict(direct.content[P.PROFILE])
    assert dict(forwarded[P.PROFILE])[P.SITE_ID] == "2"

    monkeypatch.setattr(worker, "code_digest", lambda: "another version of the code")
    assert worker.call(str(sock), _profile_query(grid), context) is None  # the ClientApp then does the work itself
    assert worker.call(str(tmp_path / "no-worker.sock"), _profile_query(grid), context) is None


def test_a_handler_error_names_no_folder_of_the_site(tiny_federation, tmp_path, monkeypatch):
    monkeypatch.delenv(worker.SOCKET_ENV, raising=False)
    run_config = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, tmp_path / "run").items()}
    grid = InProcessGrid(make_app(), [{"partition-id": 1}], run_config)
    node = {"data-path": str(tmp_path / "secret-ward" / "site-x"), "site-id": "x"}  # the folder is gone
    with pytest.raises(RuntimeError) as err:
        make_app()(_profile_query(grid), Context(1, 1000, node, RecordDict(), run_config))
    assert "site-x" in str(err.value) and "secret-ward" not in str(err.value)


def _serve_in_thread(sock):
    threading.Thread(target=worker.serve, args=(sock,), daemon=True).start()
    deadline = time.time() + 60
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)


def _call_within(seconds, *args):
    """``worker.call(*args)`` in a thread; (finished, result) after at most ``seconds``."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", worker.call(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    return "result" in out, out.get("result")


def test_a_silent_connection_holds_the_worker_for_a_bounded_time(tiny_federation, tmp_path, monkeypatch):
    """F17: one same-user connection that sends nothing held the worker (and every ClientApp waiting on it)
    for as long as it stayed open; now it is dropped after REQUEST_SECONDS."""
    monkeypatch.setattr(worker, "REQUEST_SECONDS", 1.0, raising=False)
    run_config = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, tmp_path / "run").items()}
    grid = InProcessGrid(make_app(), [{"partition-id": 1}], run_config)
    sock = tmp_path / "worker.sock"
    _serve_in_thread(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(sock))  # kept open, silent, for the whole test
        t0 = time.time()
        finished, reply = _call_within(60, str(sock), _profile_query(grid), grid.contexts[1000])
        assert finished, "a silent connection blocked the site worker"
        assert reply is not None and dict(reply[P.PROFILE])[P.SITE_ID] == "2"  # answered by the worker
        assert time.time() - t0 < 30


def test_a_caller_that_gets_no_answer_does_the_work_itself_and_the_worker_drops_it(
    tiny_federation, tmp_path, monkeypatch, capfd
):
    """F17: ``call()`` had no timeout; now a worker that does not say "ready" within ACCEPT_SECONDS (here:
    busy with a silent connection) makes the caller return None (it then handles the message in-process),
    and the worker, when it gets to the abandoned request, does not handle it a second time."""
    monkeypatch.setattr(worker, "REQUEST_SECONDS", 4.0, raising=False)
    monkeypatch.setattr(worker, "ACCEPT_SECONDS", 1.0, raising=False)
    run_config = {k.replace("_", "-"): v for k, v in tiny_overrides(tiny_federation, tmp_path / "run").items()}
    grid = InProcessGrid(make_app(), [{"partition-id": 1}], run_config)
    sock = tmp_path / "worker.sock"
    _serve_in_thread(sock)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(sock))  # occupies the single-threaded worker for REQUEST_SECONDS
    t0 = time.time()
    finished, reply = _call_within(20, str(sock), _profile_query(grid), grid.contexts[1000])
    assert finished and reply is None, "call() waited on a worker that did not answer"
    assert time.time() - t0 < 10
    silent.close()
    time.sleep(6)  # the worker drops the silent connection, then reads the abandoned request
    monkeypatch.setattr(worker, "ACCEPT_SECONDS", 30.0, raising=False)  # a loaded machine may take a while
    finished, reply = _call_within(60, str(sock), _profile_query(grid), grid.contexts[1000])
    assert finished and reply is not None  # the worker serves again
    assert capfd.readouterr().out.count("query.profile:") == 1  # the abandoned request was not handled

"""The site worker answers a forwarded message as the ClientApp would in-process, and only for its own code."""

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

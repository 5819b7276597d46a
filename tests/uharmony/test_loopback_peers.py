"""The local-account guard in front of Flower's loopback APIs (red-team review 2026-12-06, F1/F2): the kernel's
socket table names the account of a loopback peer, and the guard serves only the chosen accounts."""

import os
import pwd
import shutil
import socket
import subprocess
import threading
import time

import pytest

from uharmony.loopback_peers import LoopbackAccountGuard, peer_uid

OTHER = "uh-other-guard"


def test_the_socket_table_names_the_account_of_a_loopback_peer(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            conn, client = server.accept()
            with conn:
                assert peer_uid(client, ("127.0.0.1", port)) == os.geteuid()
                assert peer_uid(client, ("127.0.0.1", port + 1)) is None  # not this connection
    # the kernel's format: addresses as host-order hex words, the uid in the eighth column
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:D431 0100007F:2384 01 00000000:00000000 00:00000000 00000000  1002        0 1\n"
    )
    assert peer_uid(("127.0.0.1", 0xD431), ("127.0.0.1", 0x2384), [table]) == 1002
    assert peer_uid(("127.0.0.1", 0xD431), ("127.0.0.1", 0x2385), [table]) is None
    assert peer_uid(None, ("127.0.0.1", 1), [table]) is None


async def _hello(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def served():
    """A real uvicorn server on 127.0.0.1 with the guard in front: this account only; one route inspected."""
    import uvicorn

    def refuse_secret(_path, body):
        return "no secrets" if b"secret" in body else None

    port = _free_port()
    app = LoopbackAccountGuard(_hello, [os.geteuid()], what="the test API", inspect={"/inspected": refuse_secret})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROBE = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(sys.argv[2].encode())
print(s.recv(4096).split(b"\\r\\n")[0].decode())
"""


def _request(path: str, body: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )


def test_only_the_chosen_account_is_served(served):
    port = served
    for path, body, status in (("/any", b"hello", 200), ("/inspected", b"fine", 200), ("/inspected", b"secret", 403)):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(_request(path, body))
            assert s.recv(4096).split(b" ")[1] == str(status).encode(), (path, body)
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root to make a second local account")
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no interpreter another account may run")
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], capture_output=True)
    try:
        account = pwd.getpwnam(OTHER)
        res = subprocess.run(
            [python, "-c", PROBE, str(port), _request("/any", b"hello").decode()],
            user=account.pw_uid,
            group=account.pw_gid,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
    finally:
        subprocess.run(["userdel", OTHER], capture_output=True)
    assert res.stdout.strip() == "HTTP/1.1 403 Forbidden", res.stdout + res.stderr

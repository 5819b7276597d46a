"""The site worker: one long-lived process that answers the ClientApp's messages with torch, MONAI and the
site's data already loaded.

In a deployment Flower starts a new ``flwr-clientapp`` process for every message; importing torch and MONAI
alone costs that process about 3 s on a 2-core machine, and three sites sharing the cores pay it per message
wave. ``uharmony-site start`` therefore starts this worker beside the SuperNode, listening on a Unix socket
in the site's state folder (mode 0600: only the site's user can connect), and hands the SuperNode's
ClientApp processes its path (``UHARMONY_WORKER_SOCKET``). Each ClientApp process then forwards the message
and its context to the worker and returns the worker's reply: the same handlers run
(``client.client_app``), in a process that stays warm.

Frames are length-prefixed Flower protobufs (``flwr.common.serde``) and one JSON header: nothing is
unpickled. The worker answers only when its code is the code the ClientApp process runs (a digest of the
``client`` and ``uharmony`` packages: the signed app the SuperNode verified against the code the site
installed); otherwise, or when the worker is not there, the ClientApp process does the work itself.

Nothing can hold the worker: a caller has ``REQUEST_SECONDS`` to send its whole request (the worker serves
one connection at a time), and a caller that gets no answer within ``ACCEPT_SECONDS`` (a worker that hangs,
or is busy with another message) does the work itself. So that a message is never handled twice, the worker
says "ready" and handles it only after the caller's "go": a caller that gave up has sent no "go".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path

SOCKET_ENV = "UHARMONY_WORKER_SOCKET"
MAX_FRAME = 2 << 30  # 2 GiB: a model update is far below; a larger length is a corrupt stream
REQUEST_SECONDS = 30.0  # the worker's limit for reading one request (and the caller's "go")
ACCEPT_SECONDS = 30.0  # the caller's limit for the worker's "ready"; then it does the work itself
GO = b"go"


def code_digest() -> str:
    """SHA-256 over the ``client`` and ``uharmony`` packages' Python files (paths and bytes)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in ("client", "uharmony"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _send(sock: socket.socket, *frames: bytes) -> None:
    for frame in frames:
        sock.sendall(struct.pack(">Q", len(frame)) + frame)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer is too slow")
            sock.settimeout(left)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, deadline: float | None = None) -> bytes:
    (n,) = struct.unpack(">Q", _recv_exact(sock, 8, deadline))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes refused")
    return _recv_exact(sock, n, deadline)


def call(path: str, message, context, accept_seconds: float | None = None):
    """Forward ``message`` and ``context`` to the worker at ``path``. Returns the reply content
    (``RecordDict``) and updates ``context.state``; None when no compatible worker is ready within
    ``accept_seconds`` (default ``ACCEPT_SECONDS``; the caller then does the work itself). A handler's error
    in the worker is raised here, as it would be in-process."""
    from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    accept_seconds = ACCEPT_SECONDS if accept_seconds is None else accept_seconds
    deadline = time.monotonic() + accept_seconds
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(accept_seconds)
        sock.connect(path)
    except OSError:
        return None
    with sock:
        header = json.dumps({"code": code_digest()}).encode()
        try:
            _send(
                sock,
                header,
                message_to_proto(message).SerializeToString(),
                context_to_proto(context).SerializeToString(),
            )
            status = json.loads(_recv(sock, deadline))
        except (OSError, ConnectionError, ValueError):  # a worker that hangs or went away: no "go" was sent
            return None
        if status.get("status") != "ready":
            return None  # "incompatible": other code
        sock.settimeout(None)  # from here the worker works on it: its answer takes as long as the handler
        _send(sock, GO)
        status = json.loads(_recv(sock))
        if status.get("status") != "ok":
            raise RuntimeError(f"site worker: {status.get('error', 'failed')}")
        content, state = ProtoRecordDict(), ProtoRecordDict()
        content.ParseFromString(_recv(sock))
        state.ParseFromString(_recv(sock))
    context.state = recorddict_from_proto(state)
    return recorddict_from_proto(content)


def _answering(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


def serve(path: Path, once: bool = False) -> None:
    """Answer forwarded messages one at a time, until killed (``once``: one connection, for tests)."""
    from flwr.common.serde import context_from_proto, message_from_proto, recorddict_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    import uharmony.federation.site_round  # noqa: F401 - torch, MONAI and the data layer imported once, up front
    from client.client_app import make_app

    os.environ.pop(SOCKET_ENV, None)  # the handlers run here; they must not forward to themselves
    app, digest = make_app(), code_digest()
    path.parent.mkdir(parents=True, exist_ok=True)
    if _answering(path):
        raise SystemExit(
            f"site worker: {path} is served by another worker: is another SuperNode using this state folder?"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a worker that died
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(4)
    print(f"site worker listening on {path}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                deadline = time.monotonic() + REQUEST_SECONDS  # a silent caller holds the worker this long at most
                header = json.loads(_recv(conn, deadline))
                message_proto, context_proto = ProtoMessage(), ProtoContext()
                message_proto.ParseFromString(_recv(conn, deadline))
                context_proto.ParseFromString(_recv(conn, deadline))
                if header.get("code") != digest:
                    _send(conn, json.dumps({"status": "incompatible"}).encode())
                    continue
                _send(conn, json.dumps({"status": "ready"}).encode())
                if _recv(conn, time.monotonic() + REQUEST_SECONDS) != GO:  # the caller gave up: it does the work
                    continue
                conn.settimeout(None)
                message, context = message_from_proto(message_proto), context_from_proto(context_proto)
                t0 = time.time()
                try:
                    reply = app(message, context)
                except Exception as exc:  # noqa: BLE001 - the ClientApp process reports it as the handler's error
                    _send(
                        conn, json.dumps({"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}).encode()
                    )
                    continue
                kind, seconds = message.metadata.message_type, time.time() - t0
                print(f"{time.strftime('%H:%M:%S')} {kind}: {seconds:.2f} s", flush=True)
                _send(
                    conn,
                    json.dumps({"status": "ok"}).encode(),
                    recorddict_to_proto(reply.content).SerializeToString(),
                    recorddict_to_proto(context.state).SerializeToString(),
                )
            except (ConnectionError, OSError, ValueError) as exc:  # a broken or slow caller costs its own message only
                print(f"site worker: connection dropped: {exc}", file=sys.stderr, flush=True)
        if once:
            break


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.worker", description=__doc__.splitlines()[0])
    p.add_argument("--socket", type=Path, required=True)
    serve(p.parse_args(argv).socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())

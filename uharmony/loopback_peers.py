"""Which local account opened a loopback TCP connection, and an ASGI guard that serves only chosen accounts.

A TCP port on 127.0.0.1 is reachable by every account of the machine: "it listens on loopback" keeps the
network out, not the other users. Flower's SuperLink (its Control and Runtime APIs) and a SuperNode (its
Runtime API) listen on such ports, and Flower cannot bind them to a Unix socket or ask for a client
certificate. The kernel, however, records which account owns every TCP socket (``/proc/net/tcp`` and
``tcp6``, the ``uid`` column): for a connection between two sockets of this machine, the client's entry
(local address = the client's, remote address = the server's) names the account that opened it, as a Unix
socket's peer credentials would. ``LoopbackAccountGuard`` wraps an ASGI application (Flower's FastAPI apps)
and answers 403 to a connection from any other account before the application reads a byte of the request.
A connection from another machine, or one whose owner cannot be found, is refused too (fail closed).

Flower-free: the SuperLink's and the SuperNode's launchers (``server/operator/guarded_superlink.py``,
``client/guarded_supernode.py``) put it in front of Flower's apps.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
FLEET_ROUTE = re.compile(r"/v1/fleet/[a-z][a-z-]*")  # exact Fleet API routes: no dots, no slashes, no encoding
NO_PERMISSIONS = 9  # Flower's ApiErrorCode.NO_PERMISSIONS: the Flower CLI prints the detail
Inspector = Callable[[str, bytes], "str | None"]


def _address(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    # the kernel prints each 32-bit word of the address in host byte order (little-endian here)
    words = b"".join(struct.pack("<I", int.from_bytes(raw[i : i + 4], "big")) for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def _normal(addr: tuple[str, int]) -> tuple[str, int]:
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(addr[1])


def peer_uid(client: tuple[str, int] | None, server: tuple[str, int] | None, tables: Iterable[Path] = PROC_TABLES):
    """The uid that owns the local socket ``client`` connected to ``server``; None when there is none."""
    if not client or not server:
        return None
    try:
        want_local, want_remote = _normal(client), _normal(server)
    except ValueError:
        return None
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                if _address(fields[1]) == want_local and _address(fields[2]) == want_remote:
                    return int(fields[7])
            except ValueError:
                continue
    return None


async def refuse(send, status: int, detail: str) -> None:
    """Answer an HTTP request with ``status`` and a JSON error that Flower's clients print."""
    body = json.dumps({"code": NO_PERMISSIONS, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LoopbackAccountGuard:
    """ASGI middleware: only connections opened by ``accounts`` (uids) reach ``app``; ``fleet_accounts`` may
    also reach the Fleet API routes (the gateway's workers). ``inspect`` maps a path to a function of the
    request body that returns a refusal reason or None (bodies up to ``max_inspected`` bytes)."""

    def __init__(
        self,
        app,
        accounts: Iterable[int],
        fleet_accounts: Iterable[int] = (),
        what: str = "this service",
        inspect: dict[str, Inspector] | None = None,
        max_inspected: int = 16 << 20,
        uid_of: Callable[[tuple | None, tuple | None], int | None] = peer_uid,
    ) -> None:
        self.app, self.accounts, self.fleet = app, frozenset(accounts), frozenset(fleet_accounts)
        self.what, self.inspect, self.max_inspected, self.uid_of = what, inspect or {}, max_inspected, uid_of

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan events pass through
            return await self.app(scope, receive, send)
        uid = self.uid_of(scope.get("client"), scope.get("server"))
        path = scope.get("path", "")
        allowed = self.accounts | (self.fleet if FLEET_ROUTE.fullmatch(path) else frozenset())
        if uid is None or uid not in allowed:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            who = "an unidentified peer" if uid is None else f"local account uid {uid}"
            return await refuse(send, 403, f"{self.what} serves only its own service account, not {who}")
        check = self.inspect.get(path)
        if check is None:
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_inspected:
                return await refuse(send, 413, f"request body over {self.max_inspected} bytes")
        reason = check(path, body)
        if reason:
            return await refuse(send, 403, reason)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

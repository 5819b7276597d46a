"""The coordinator's gateway (nginx) in front of the real SuperLink, without hospitals: body limits (F3), a
flood of half-open TLS requests (F4), its workers' account, temporary folders and the registry's port (F18)
(red-team review 2026-12-06).

The real ``uharmony-coordinator start`` (the SuperLink through ``server.operator.guarded_superlink``, nginx, the app
registry) runs once for the module, with nothing given for the registry's port and a listener (a
SuperNode's Runtime API on its default port, 9094 = 9092 + 2) on the gateway's port + 2.
"""

import os
import pwd
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.operator import gateway
from simulation.deployment import LocalConsortium, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]


def _ports() -> tuple[int, socket.socket]:
    """A free port whose port + 2 is held by a listener (as a SuperNode's Runtime API would hold 9094)."""
    for _ in range(100):
        port = free_port()
        try:
            held = socket.create_server(("127.0.0.1", port + 2))
        except OSError:
            continue
        return port, held
    raise RuntimeError("no port pair")


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    c = LocalConsortium(root)
    c.port, held = _ports()
    c.init_pki()
    if os.geteuid() == 0:  # started as root, the gateway's workers run as this account
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "uharmony-gateway"],
            capture_output=True,
        )
    try:
        c.spawn("coordinator", "uharmony-coordinator", "start", "--pki", "pki", "--state", "state", "--host",
                "127.0.0.1", "--port", c.port, "--superlink-port", c.link)  # fmt: skip
        wait_for(lambda: _status(c.port, c.root / "pki" / "ca.crt", 0, "/") == 403, 120, "the gateway",
                 c.procs["coordinator"])  # fmt: skip
        # nginx answers before the SuperLink behind it is up (a 502 then): wait until a small request reaches Flower
        wait_for(lambda: _status(c.port, c.root / "pki" / "ca.crt", _push_object(16), timeout=10) == 401, 120,
                 "the SuperLink behind the gateway", c.procs["coordinator"])  # fmt: skip
        yield c
    finally:
        c.close()
        held.close()


def _status(port: int, ca: Path, body: int | bytes, path="/v1/fleet/push-object", timeout: float = 60) -> int | None:
    """The HTTP status of a POST of ``body`` (bytes, or that many zeros; no key) through the gateway; None if
    none comes."""
    size = body if isinstance(body, int) else len(body)
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/protobuf\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            s.settimeout(3)
            try:
                first = s.recv(4096)  # nginx answers an over-limit body from its header alone
            except TimeoutError:
                first = b""
            if not first:
                s.settimeout(timeout)
                try:
                    for start in range(0, size, 1 << 20):
                        s.sendall(
                            b"\0" * min(1 << 20, size - start)
                            if isinstance(body, int)
                            else body[start : start + (1 << 20)]
                        )
                except OSError:
                    pass
                first = s.recv(4096)
            return int(first.split(b" ", 2)[1])
    except (OSError, IndexError, ValueError):
        return None


def test_the_config_limits_bodies_buffers_them_and_bounds_connections(tmp_path):
    """F3/F4 on the written configuration: bodies at most 16 MiB and buffered by nginx, per-address limits,
    header and body timeouts, no hour-long upstream timeout, room for many connections."""
    conf = gateway.nginx_config(tmp_path / "pki", tmp_path / "state", "127.0.0.1", 9092, 9093).read_text()

    def value(name):
        found = re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.M)
        assert len(found) == 1, (name, found)
        return found[0].strip()

    size = value("client_max_body_size")
    assert size.endswith("m") and int(size[:-1]) <= 16
    assert value("proxy_request_buffering") == "on"
    assert "limit_conn per_address" in conf and "limit_req zone=" in conf
    assert int(value("client_header_timeout").rstrip("s")) <= 15
    assert int(value("client_body_timeout").rstrip("s")) <= 60
    assert int(value("proxy_read_timeout").rstrip("s")) <= 300
    assert int(re.search(r"worker_connections (\d+);", conf).group(1)) >= 4096


def _push_object(size: int) -> bytes:
    """A well-formed PushObjectRequest carrying ``size`` bytes (what a SuperNode pushes, unsigned)."""
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.proto.node_pb2 import Node

    return PushObjectRequest(
        node=Node(node_id=1), run_id=1, object_id="0" * 64, object_content=b"\0" * size
    ).SerializeToString()


def test_a_body_over_flowers_chunk_size_is_refused_by_nginx(coordinator):
    """F3: the gateway allowed 2 GB and streamed bodies to the SuperLink, which reads one whole before it
    authenticates the node (3 x 300 MB took it to 2.9 GB). Now nginx itself refuses a body over 8 MiB from its
    header (413, the SuperLink never sees it); a 6 MiB one (above Flower's 5 MiB chunks) still reaches Flower,
    which refuses the missing key (401)."""
    c = coordinator
    ca = c.root / "pki" / "ca.crt"
    t0 = time.time()
    assert _status(c.port, ca, 200 << 20) == 413
    assert time.time() - t0 < 10
    assert _status(c.port, ca, _push_object(6 << 20)) == 401
    log = (c.root / "state" / "gateway" / "access.log").read_text()
    assert 'POST /v1/fleet/push-object HTTP/1.1" 413' in log


FLOOD = """
import resource, socket, ssl, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
conns, held, t0 = [], 0, time.time()
while time.time() - t0 < hold:
    conns = [c for c in conns if c.fileno() != -1]
    while len(conns) < n and time.time() - t0 < hold:
        try:
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=3))
            s.sendall(b"POST /v1/fleet/push-object HTTP/1.1\\r\\nHost: x\\r\\n")   # headers never finished
            conns.append(s)
        except Exception:
            break
    held = max(held, len(conns))
    print("held", held, flush=True)
    time.sleep(0.5)
"""


def test_a_flood_of_half_open_requests_leaves_room_for_sites(coordinator):
    """F4: ~1,000 half-open TLS requests filled the gateway's 1,024 connections and a SuperNode's request then
    failed its TLS handshake (after which Flower stops retrying). Now, with 1,030 of them held, a request
    still gets its answer."""
    c = coordinator
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(c.port), "1030", "40"], stdout=subprocess.PIPE, text=True
    )
    try:
        held = 0
        deadline = time.time() + 60
        while held < 1000 and time.time() < deadline:
            line = flood.stdout.readline()
            held = int(line.split()[1]) if line.startswith("held") else held
        assert held >= 1000, held
        answers = [_status(c.port, c.root / "pki" / "ca.crt", 0, "/", timeout=10) for _ in range(5)]
        assert answers == [403] * 5, answers
    finally:
        flood.kill()
        flood.wait()


def _worker_uids(state: Path) -> set[int]:
    master = int((state / "gateway" / "nginx.pid").read_text())
    uids = set()
    for proc in Path("/proc").iterdir():
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        if re.search(rf"^PPid:\s+{master}$", status, re.M) and "nginx" in status.splitlines()[0]:
            uids.add(int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)))
    return uids


def test_the_gateway_runs_as_its_own_account_with_private_temp_folders(coordinator):
    """F18: nginx's workers ran as the shared ``nobody`` with 1777 temporary folders. Now they run as a
    dedicated account (``uharmony-gateway`` when started as root, else the service account), and their
    temporary folders are 0700 and theirs."""
    c = coordinator
    uids = _worker_uids(c.root / "state")
    expected = pwd.getpwnam("uharmony-gateway").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert uids == {expected}
    assert pwd.getpwnam("nobody").pw_uid not in uids
    conf = (c.root / "state" / "gateway" / "nginx.conf").read_text()
    temps = re.findall(r"^\s*\w+_temp_path\s+(\S+);", conf, re.M)
    assert len(temps) == 5
    for folder in map(Path, temps):
        assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == expected, folder


def test_the_app_registry_does_not_take_the_supernodes_default_port(coordinator):
    """F18: the registry's default port was the gateway's + 2 = 9094, the SuperNode Runtime API's default: a
    pilot with both on one host collided. Here port + 2 is taken, and the coordinator runs anyway."""
    c = coordinator
    assert c.procs["coordinator"].poll() is None, c.log("coordinator")
    line = next(x for x in c.log("coordinator").splitlines() if "app registry on 127.0.0.1:" in x)
    assert int(re.search(r"app registry on 127\.0\.0\.1:(\d+)", line).group(1)) != c.port + 2

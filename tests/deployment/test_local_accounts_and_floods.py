"""What another account of the coordinator's or a hospital's machine, and an outsider who reaches the public
port, can still do to a running consortium (red-team review 2026-12-06: F1, F2, F4, F10; the gateway's own
limits, F3 and F18, are in ``tests/server/test_gateway.py``).

One consortium on 127.0.0.1 (real SuperLink behind the nginx gateway, two hospitals with their SuperNodes
and site workers, TLS), in a folder every account may traverse, so that only the modes the product sets
protect its files. ``s2`` reaches the gateway through a TCP relay that the test can make drop every
connection. "Another account" is a throwaway account made with ``useradd`` (so the tests that use one need
root: they are skipped otherwise), running the system's Python 3.11 with the project's ``site-packages``
(Flower's own client code, which anyone can install).
"""

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from simulation.deployment import TINY_RUN, LocalConsortium, final_status, records, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]  # one worker, in turn
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and "/.venv/" in p + "/")
OTHER = "uh-other-account"


def _other_python() -> str | None:
    """An interpreter another account may run that has the venv's Python version (3.11)."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    for exe in (f"/usr/bin/python{want}", f"/usr/local/bin/python{want}", "/usr/bin/python3"):
        res = subprocess.run([exe, "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
        if Path(exe).is_file() and res.returncode == 0 and res.stdout.startswith(want):
            return exe
    return None


@pytest.fixture(scope="module")
def other():
    """A throwaway unprivileged account and a folder of its own; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root (and useradd) to make a second local account")
    python = _other_python()
    if python is None:
        pytest.skip("no Python 3.11 interpreter that another account may run")
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], capture_output=True)
    account = pwd.getpwnam(OTHER)
    home = Path(tempfile.mkdtemp(prefix="uh-other-"))
    os.chown(home, account.pw_uid, account.pw_gid)
    yield {"account": account, "home": home, "python": python}
    shutil.rmtree(home, ignore_errors=True)
    subprocess.run(["userdel", OTHER], capture_output=True)


def as_other(other, code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python ``code`` as the other account, in its folder, with Flower importable."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(other["home"]),
        "FLWR_HOME": str(other["home"] / "flwr"),
        "PYTHONPATH": SITE_PACKAGES,
        "PYTHONWARNINGS": "ignore",
    }
    account = other["account"]
    return subprocess.run(
        [other["python"], "-c", textwrap.dedent(code), *map(str, args)],
        user=account.pw_uid,
        group=account.pw_gid,
        env=env,
        cwd=other["home"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Relay:
    """A TCP relay from 127.0.0.1:``port`` to ``target`` that can cut every connection (as a gateway that
    ran out of connections does: the client's TLS handshake ends in an EOF)."""

    def __init__(self, target: int) -> None:
        self.target, self.cutting, self.pairs = target, False, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.cutting:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self, on: bool) -> None:
        self.cutting = on
        if on:
            for pair in self.pairs:
                for s in pair:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
            self.pairs.clear()


def _online(c: LocalConsortium, names=("s1", "s2")) -> bool:
    return c.online(names)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    root = Path(tempfile.mkdtemp(prefix="uh-consortium-"))
    root.chmod(0o755)  # every account may look in: only the product's own modes protect its files
    c = LocalConsortium(root)
    try:
        c.init_pki()
        for name in ("s1", "s2"):
            c.keygen(name)
        c.start_coordinator()
        for i, name in enumerate(("s1", "s2")):
            c.register(name, i)
        c.publish()
        relay = Relay(c.port)
        for i, folder in enumerate(c.site_folders(2, 3)):
            config = c.site_config(folder.name, i, folder, root / "keys" / folder.name / "auth.key", retries=1000,
                                   wait=600)  # fmt: skip
            if folder.name == "s2":  # through the relay
                config.write_text(config.read_text().replace(f"127.0.0.1:{c.port}", f"127.0.0.1:{relay.port}"))
            c.start_site(folder.name, config)
        for name in ("s1", "s2"):
            wait_for(lambda n=name: "SuperNode ID:" in c.log(n), 180, f"{name}'s SuperNode", c.procs[name])
        c.relay = relay
        yield c
    finally:
        c.close()
        logs = tmp_path_factory.mktemp("consortium-logs")  # kept by pytest for the last runs
        for path in [*root.glob("*.log"), *root.glob("run/*.jsonl"), root / "state" / "superlink.log"]:
            if path.is_file():
                shutil.copy(path, logs / path.name)
        shutil.rmtree(root, ignore_errors=True)


def _flwr_config(other, c: LocalConsortium) -> None:
    """The other account's Flower CLI config: the SuperLink's loopback port, the public CA file."""
    home = other["home"]
    (home / "flwr").mkdir(exist_ok=True)
    shutil.copy(c.root / "pki" / "ca.crt", home / "ca.crt")
    (home / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{c.link}"\n'
        f'root-certificates = "{home / "ca.crt"}"\n'
    )
    app = home / "tiny-app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "tinyapp"\nversion = "1.0.0"\ndependencies = ["flwr"]\n\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["."]\n\n'
        '[tool.flwr.app]\npublisher = "other"\n\n'
        '[tool.flwr.app.components]\nserverapp = "tiny:app"\nclientapp = "tiny:client"\n'
    )
    (app / "tiny.py").write_text(
        "import os\nfrom flwr.clientapp import ClientApp\nfrom flwr.serverapp import ServerApp\n\n"
        "app = ServerApp()\nclient = ClientApp()\n\n\n@app.main()\ndef main(grid, context):\n"
        f"    open({str(home / 'MARKER')!r}, 'w').write(str(os.getuid()))\n"
    )
    for path in [home / "flwr", home / "flwr" / "config.toml", home / "ca.crt", app, *app.iterdir()]:
        os.chown(path, other["account"].pw_uid, other["account"].pw_gid)


def test_another_local_account_cannot_submit_a_run_or_take_the_serverapps_task(consortium, other):
    """F1: the first step of the red team's chain, as another account of the coordinator's machine: `flwr run`
    of its own app against the SuperLink's loopback port. It ran, as the coordinator's user; now refused."""
    c = consortium
    _flwr_config(other, c)
    res = as_other(other, "from flwr.cli.app import app; app()", "run", "tiny-app", "local", "--format", "json")
    out = res.stdout + res.stderr
    assert '"success": false' in out and "run-id" not in out, out  # (`flwr run --format json` exits 0 anyway)
    assert "serves only its own service account" in out, out
    time.sleep(5)
    assert not (other["home"] / "MARKER").exists()  # no ServerApp of it ran
    # the Runtime API (the ServerApp's task; the token the red team read from superlink.db) is closed too
    probe = as_other(
        other,
        """
        import sys
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient
        cli = RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{sys.argv[1]}", insecure=False,
            root_certificates=sys.argv[2], interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        try:
            res = cli.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-serverapp"]))
            print("ANSWERED", res.HasField("task"))
        except Exception as exc:
            print("REFUSED", getattr(getattr(exc, "response", None), "status_code", type(exc).__name__))
        """,
        c.link,
        other["home"] / "ca.crt",
    )
    assert "REFUSED 403" in probe.stdout, probe.stdout + probe.stderr


def test_another_local_account_cannot_use_a_sites_runtime_api(consortium, other):
    """F2: as another account of a hospital's machine, ask s1's SuperNode for a task (the red team took a
    training task, read the model and the site's statistics and answered as the hospital): refused."""
    c = consortium
    port = next(int(x.split("=")[1]) for x in (c.root / "s1.toml").read_text().splitlines() if x.startswith("port"))
    probe = as_other(
        other,
        """
        import sys
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
        from flwr.supercore.runtime import RuntimeHttpClient
        cli = RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{sys.argv[1]}", insecure=True,
            root_certificates=None, interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        try:
            res = cli.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
            print("ANSWERED", res.HasField("task"))
        except Exception as exc:
            print("REFUSED", getattr(getattr(exc, "response", None), "status_code", type(exc).__name__))
        """,
        port,
    )
    assert "REFUSED 403" in probe.stdout, probe.stdout + probe.stderr


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
    time.sleep(0.5)
print("held", held)
"""


def _mark(c: LocalConsortium, name: str) -> tuple[int, int]:
    """Where ``name``'s log is now: (its length, how many SuperNodes of it have connected so far)."""
    log = c.log(name)
    return len(log), log.count("SuperNode ID:")


def _talking(c: LocalConsortium, name: str, mark: tuple[int, int]) -> bool:
    """``name``'s SuperNode talks to the SuperLink: it has not given up since ``mark``, or a SuperNode started
    since has connected; and the SuperLink sees its node online. (The SuperLink alone is not enough: it calls a
    node that gave up online until two heartbeats are missed.)"""
    log = c.log(name)
    gave_up = "SSL/TLS handshake error detected" in log[mark[0] :]
    return (not gave_up or log.count("SuperNode ID:") > mark[1]) and _online(c, (name,))


def test_a_connection_flood_does_not_take_the_sites_offline(consortium):
    """F4: about 1,000 half-open TLS requests filled the gateway's connections; every SuperNode hit a TLS
    error, stopped retrying and stayed offline. Now the gateway has room and times half-open requests out:
    after a 30-s flood both sites talk to the SuperLink (a SuperNode that gave up would have to have been
    started again)."""
    c = consortium
    assert _online(c)
    marks = {name: _mark(c, name) for name in ("s1", "s2")}
    flood = subprocess.run(
        [sys.executable, "-c", FLOOD, str(c.port), "1030", "30"], capture_output=True, text=True, timeout=300
    )
    assert "held" in flood.stdout, flood.stderr
    for name in ("s1", "s2"):
        wait_for(lambda n=name: _talking(c, n, marks[n]), 120, f"{name} talking after the flood", poll=3)


def test_a_supernode_that_stopped_talking_to_the_superlink_is_restarted(consortium):
    """F4: Flower's SuperNode gives up on the first TLS error and stays up, offline for good. Here the relay in
    front of s2 drops every connection for a while: uharmony-site starts the SuperNode again (and again,
    while the SuperLink still holds the old connection), until a new SuperNode of s2 is connected."""
    c = consortium
    wait_for(lambda: _online(c), 60, "both sites online")
    mark = _mark(c, "s2")
    c.relay.cut(True)
    wait_for(lambda: "SSL/TLS handshake error detected" in c.log("s2")[mark[0] :], 120, "s2's SuperNode to give up")
    time.sleep(8)  # the way back is still closed for a while: starts fail and are retried
    c.relay.cut(False)
    wait_for(lambda: "stopped talking to the SuperLink" in c.log("s2")[mark[0] :], 60, "uharmony-site to notice")
    wait_for(lambda: c.log("s2").count("SuperNode ID:") > mark[1], 300, "a new SuperNode of s2 connected", poll=3)
    wait_for(lambda: _online(c), 60, "both sites online", poll=3)
    assert c.procs["s2"].poll() is None  # the daemon is the same; only its SuperNode was started again


def test_a_run_completes_and_no_other_account_reads_what_it_wrote(consortium, other):
    """F4 (the consortium still works after the flood and the cut) and F10: the
    coordinator's state folder and database, and every file of a site's state (preprocessed scans and labels,
    per-case Dice, statistics), are this account's alone."""
    c = consortium
    run_dir = c.root / "run"
    status = final_status(
        c, c.submit(f"num-server-rounds=1 {TINY_RUN} eval-every=1 num-domains=2 min-sites=2 run-dir='{run_dir}'")
    )
    assert status["status"] == "finished:completed", status
    trained = next(r for r in records(run_dir) if r.get("event") == "train")
    assert sorted(trained["sites"]) == ["s1", "s2"], records(run_dir)
    state = c.root / "state"
    exposed = [
        str(p.relative_to(c.root))
        for folder in (state, c.root / "state-s1", c.root / "state-s2")
        for p in (folder, *folder.rglob("*"))
        if not p.is_symlink() and p.stat().st_mode & 0o077
    ]
    assert exposed == [], exposed
    assert any((c.root / "state-s1" / "preprocessed").iterdir())  # there was something to protect
    probe = as_other(
        other,
        """
        import sys
        for path in sys.argv[1:]:
            try:
                open(path, "rb").read(1)
                print("READ", path)
            except OSError as exc:
                print("DENIED", path, exc.errno)
        """,
        state / "superlink.db",
        c.root / "state-s1" / "cases.jsonl",
        c.root / "pki" / "app-signing.key",
    )
    assert "READ" not in probe.stdout and probe.stdout.count("DENIED") == 3, probe.stdout + probe.stderr


def test_unregister_removes_the_sites_node_from_the_superlink(consortium):
    """``unregister`` revoked the key in the site registry but looked for the node by a name that
    ``flwr supernode list`` does not print, so the SuperLink kept the node ("0 SuperLink node(s)
    unregistered"): the revoked site could still connect."""
    c = consortium
    out = c.cmd("uharmony-coordinator", "unregister", "--state", "state", "--site", "s2").stdout
    assert "1 SuperLink node(s) unregistered" in out, out
    node = re.findall(r"SuperNode ID: (\d+)", c.log("s2"))[-1]
    assert c.nodes().get(node) == "unregistered"

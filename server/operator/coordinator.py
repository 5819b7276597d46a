"""``uharmony-coordinator``: run the consortium's SuperLink, with a closed control plane and signed apps.

    uharmony-coordinator start      --pki pki --state state [--host 0.0.0.0] [--port 9092] [--gateway-user U]
    uharmony-coordinator register   --state state --site hospital-a --domain 0 --public-key auth.pub
    uharmony-coordinator unregister --state state --site hospital-a
    uharmony-coordinator publish    --pki pki --state state [--app .] [--passphrase-file F]
    uharmony-coordinator run        --pki pki --state state [-c "num-server-rounds=20"] [--timeout S] [--resume ID]
    uharmony-coordinator status     --state state [--json]

Run every command as the coordinator's dedicated service account (e.g. ``sudo -u uharmony ...``): the
SuperLink serves its Control and Runtime APIs to that account (and root) only.

``start`` runs three things and stops them together: the real SuperLink (Flower's, through
``server/operator/guarded_superlink.py``: TLS, SuperNode authentication, a state database) listening on 127.0.0.1
only and answering only the service account (the gateway's workers: the Fleet API only); the gateway
(nginx, ``server/operator/gateway.py``) on ``--host:--port`` that forwards the Fleet API and refuses everything
else; and the app registry (``server/operator/app_registry.py``, on a free loopback port) that hands the SuperLink
the coordinator's signed app. ``register`` and ``run`` use the SuperLink's local address
(``FLWR_HOME=<state>/flwr``). ``publish`` signs with the app-signing key, whose passphrase it asks for.
``run`` submits the latest published (signed) app and passes the ServerApp the site registry (which key
is which site and domain) and the separate key it signs model manifests with; it prints the run's progress
round by round and writes its results into ``<state>/runs/<run-id>/`` (``server/operator/deployed_runs.py``).
``status`` lists the registered sites (online or not) and the runs with their last round
(``server/operator/consortium_status.py``). Everything is written with umask 077; ``<state>`` is 0700.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.operator import app_registry, consortium_status, deployed_runs, gateway
from server.operator.control_api import CONNECTION, flwr_env, list_nodes
from server.operator.control_api import exe as _exe
from server.operator.control_api import flwr as _flwr
from server.operator.control_api import last_error as _last_error
from server.operator.pki import PKIError, model_signing_key, read_passphrase
from server.registry import RegistryError, SiteRegistry
from uharmony.files import private_dir, private_tree

GATEWAY_USER = "uharmony-gateway"  # the gateway's workers' account when start runs as root


def write_connection(state: Path, superlink_port: int, ca: Path) -> Path:
    """The Flower CLI talks to the SuperLink's HTTPS API on this machine's loopback interface."""
    home = state / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config.toml"
    cfg.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{superlink_port}"\nroot-certificates = "{ca.resolve()}"\n'
    )
    return cfg


def make_private(folder: Path) -> None:
    """``folder`` and everything in it this account's only (0700 folders,
    0600 files; the database holds run configs, the ServerApp's logs and its task token)."""
    private_tree(private_dir(folder))


def superlink_command(pki: Path, state: Path, port: int, gateway_uid: int | None = None) -> list[str]:
    """Flower's SuperLink through ``server.operator.guarded_superlink``: every API for this account and root, the
    Fleet API also for the gateway's workers."""
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        if not (pki / name).is_file():
            raise FileNotFoundError(f"{pki / name}: missing; create it with uharmony-pki")
    _exe("flower-superexec")  # the SuperLink starts it by name
    accounts = [arg for uid in sorted({os.geteuid(), 0}) for arg in ("--account", str(uid))]
    gateway_accounts = ["--gateway-account", str(gateway_uid)] if gateway_uid is not None else []
    return [
        sys.executable,
        "-m",
        "server.operator.guarded_superlink",
        *accounts,
        *gateway_accounts,
        "--",
        "--ssl-ca-certfile",
        str(pki / "ca.crt"),
        "--ssl-certfile",
        str(pki / "superlink.crt"),
        "--ssl-keyfile",
        str(pki / "superlink.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(state / "superlink.db"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-file",
        str(state / "superlink.log"),
    ]


def gateway_account(user: str | None) -> pwd.struct_passwd:
    """The account nginx's workers run as: this one (the service account), or, when started as root, a
    dedicated one (``--gateway-user``, default ``uharmony-gateway``), never the shared ``nobody``."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = user or GATEWAY_USER
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"the gateway's account {name!r} does not exist: create it (useradd --system --no-create-home "
            f"--shell /usr/sbin/nologin {name}), name another with --gateway-user, or run start as the "
            "coordinator's service account"
        ) from None


def start(
    pki: Path, state: Path, host: str, port: int, superlink_port: int, registry_port: int = 0, gateway_user=None
) -> int:
    """Run the SuperLink (loopback), the gateway (public) and the app registry until one of them ends."""
    ports_free(
        port=(host, port), superlink_port=("127.0.0.1", superlink_port), registry_port=("127.0.0.1", registry_port)
    )
    make_private(state)
    write_connection(state, superlink_port, pki / "ca.crt")
    worker = gateway_account(gateway_user)
    temp = None if worker.pw_uid == os.geteuid() else Path(tempfile.mkdtemp(prefix="uharmony-gateway-"))
    commands = {
        "superlink": superlink_command(pki, state, superlink_port, worker.pw_uid),
        "gateway": gateway.nginx_command(gateway.nginx_config(pki, state, host, port, superlink_port, worker, temp)),
    }
    registry = app_registry.serve(state, registry_port, app_registry.app_public_key(pki))
    registry_port = registry.server_address[1]
    procs = {name: subprocess.Popen(cmd, env=flwr_env(state, registry_port)) for name, cmd in commands.items()}
    print(
        f"SuperLink on 127.0.0.1:{superlink_port} (this machine's account {pwd.getpwuid(os.geteuid()).pw_name} "
        f"only); gateway on {host}:{port} (Fleet API only; workers as {worker.pw_name}); app registry on "
        f"127.0.0.1:{registry_port}",
        flush=True,
    )
    stop = {"signal": None}

    def handle(signum, _frame):
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    code = 0
    while stop["signal"] is None:
        ended = {n: p.poll() for n, p in procs.items() if p.poll() is not None}
        if ended:
            name, code = next(iter(ended.items()))
            print(f"uharmony-coordinator: {name} exited with {code}; stopping", file=sys.stderr, flush=True)
            break
        time.sleep(0.5)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    registry.shutdown()
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
    return code or 0


def register(state: Path, site: str, domain: int, public_key: Path, max_cases: int = 0) -> str:
    """Record the site's key, domain and the most training cases it may declare (0: no cap), then register the
    key with the SuperLink under the site's name."""
    try:
        text = public_key.read_text()
    except OSError as exc:
        raise RegistryError(f"{public_key}: cannot read the site's public key ({exc.strerror})") from None
    SiteRegistry(state / "registry.json").add(site, domain, text, max_cases)
    res = _flwr(state, "supernode", "register", str(public_key), CONNECTION, "--name", site)
    if res.returncode == 0:
        return "registered"
    if "already in use" in (res.stdout + res.stderr).lower():  # idempotent
        return "already registered"
    raise RuntimeError(f"flwr supernode register: {_last_error(res)}")


def node_ids(state: Path, site: str) -> list[int]:
    """The SuperLink's nodes registered under ``site``'s name (``flwr supernode list`` does not print the
    name, so this asks the Control API with Flower's own client)."""
    return [n.node_id for n in list_nodes(state) if n.name == site and n.status != "unregistered"]


def unregister(state: Path, site: str) -> str:
    """Revoke the site: the ServerApp stops admitting its key, and the SuperLink forgets its node."""
    SiteRegistry(state / "registry.json").revoke(site)
    ids = node_ids(state, site)
    for node_id in ids:
        out = _flwr(state, "supernode", "unregister", str(node_id), CONNECTION)
        if out.returncode != 0:
            raise RuntimeError(f"flwr supernode unregister {node_id}: {_last_error(out)}")
    return f"revoked; {len(ids)} SuperLink node(s) unregistered"


def server_app_config(pki: Path, state: Path) -> str:
    """What every run gets on top of its run config: the site registry and the model-signing key (never
    the app-signing key)."""
    registry, key = (state / "registry.json").resolve(), model_signing_key(pki).resolve()
    return f"site-registry='{registry}' model-signing-key='{key}'"


def run(
    pki: Path, state: Path, run_config: str = "", timeout: float = 0, resume: str | None = None, poll: float = 2.0
) -> dict:
    """Submit the latest published (signed) app as a new run (or ``resume`` one) and print its progress until
    it ends; returns its ``flwr ls`` row and its folder. ``timeout`` > 0: stop waiting after that many s."""
    app = app_registry.latest(state, app_registry.app_public_key(pki))
    config, folder, run_id = deployed_runs.run_overrides(state, run_config, resume)
    flwr_id = deployed_runs.submit(
        state, f"{app['app_id']}=={app['version']}", f"{config} {server_app_config(pki, state)}"
    )
    deployed_runs.record_flower_run(folder, flwr_id)
    print(
        f"run {flwr_id} submitted ({app['app_id']}=={app['version']}, run id {run_id or 'from the checkpoint'}); "
        f"results in {folder}; progress below (also: FLWR_HOME={flwr_env(state)['FLWR_HOME']} flwr log {flwr_id} "
        f"{CONNECTION})",
        flush=True,
    )
    try:
        row = deployed_runs.wait(state, flwr_id, folder, run_id, timeout, poll)
    except KeyboardInterrupt:
        raise TimeoutError(f"stopped waiting for run {flwr_id}; it goes on (results in {folder})") from None
    return {**row, "run-dir": str(folder)}


def ports_free(**ports: tuple[str, int]) -> None:
    """Refuse to start when a listener's port is taken, naming the option that sets it."""
    for option, (host, port) in ports.items():
        if not port:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no clash
            try:
                s.bind((host, port))
            except OSError as exc:
                raise RuntimeError(
                    f"--{option.replace('_', '-')} {port}: {host}:{port} is not free ({exc.strerror}); "
                    f"choose another port with --{option.replace('_', '-')}"
                ) from None


APP_FOLDER = Path(__file__).resolve().parents[2]  # the repository: pyproject.toml and the apps' packages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-coordinator", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="run the SuperLink (loopback), the gateway (public) and the app registry")
    s.add_argument("--host", default="0.0.0.0", help="public interface of the gateway (SuperNodes connect here)")
    s.add_argument("--port", type=int, default=9092, help="public port of the gateway")
    s.add_argument("--superlink-port", type=int, default=None, help="the SuperLink's loopback port (default port+1)")
    s.add_argument(
        "--registry-port", type=int, default=0, help="the app registry's loopback port (default: a free one)"
    )
    s.add_argument("--gateway-user", default=None, help=f"started as root: the gateway's account ({GATEWAY_USER})")
    r = sub.add_parser("register", help="register a site's public key for a site name and domain")
    r.add_argument("--site", required=True, help="the site's name (its site.toml's site-id)")
    r.add_argument("--domain", type=int, required=True, help="the site's domain, 0-255 (its site.toml's domain-id)")
    r.add_argument("--public-key", type=Path, required=True, help="the site's auth.pub (uharmony-site keygen)")
    r.add_argument(
        "--max-cases", type=int, default=0, help="the most training cases the site may declare: its weight's bound"
    )
    x = sub.add_parser("unregister", help="revoke a site")
    x.add_argument("--site", required=True, help="the site to revoke")
    b = sub.add_parser("publish", help="build and sign the app the SuperNodes will run")
    b.add_argument("--app", type=Path, default=APP_FOLDER, help="the app's folder")
    b.add_argument("--passphrase-file", type=Path, default=None, help="the PKI passphrase (else asked for)")
    u = sub.add_parser("run", help="run the latest published app, print its progress and wait for its final status")
    u.add_argument("-c", "--run-config", default="", help="run-config overrides, as flwr run -c")
    u.add_argument(
        "--timeout",
        type=float,
        default=0,
        help="seconds to wait for the run before exiting 2 (it goes on); 0: no limit",
    )
    u.add_argument(
        "--resume",
        default=None,
        metavar="RUN_ID",
        help="continue this run from its last checkpoint (its folder's run id, or Flower's id of any of its attempts)",
    )
    t = sub.add_parser("status", help="registered sites (online or not), runs and their last round")
    t.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    for sp in (s, b, u):
        sp.add_argument("--pki", type=Path, required=True, help="the PKI folder (uharmony-pki init-ca --dir)")
    for sp in (s, r, x, b, u, t):
        sp.add_argument(
            "--state", type=Path, required=True, help="the coordinator's state folder (database, registry, apps, runs/)"
        )
    a = p.parse_args(argv)
    os.umask(0o077)  # the database, logs, registry and published apps: the service account's alone
    try:
        make_private(a.state)
        if a.cmd == "start":
            return start(
                a.pki, a.state, a.host, a.port, a.superlink_port or a.port + 1, a.registry_port, a.gateway_user
            )
        if a.cmd == "register":
            print(f"{a.site}: {register(a.state, a.site, a.domain, a.public_key, a.max_cases)} (domain {a.domain})")
        elif a.cmd == "unregister":
            print(f"{a.site}: {unregister(a.state, a.site)}")
        elif a.cmd == "publish":
            passphrase = read_passphrase(a.passphrase_file, "passphrase of the app-signing key")
            rec = app_registry.publish(a.app, a.pki, a.state, passphrase)
            print(
                f"published {rec['app_id']}=={rec['version']} sha256 {rec['sha256'][:16]}... signed by "
                f"{rec['verifications'][0]['public_key_id']}"
            )
        elif a.cmd == "status":
            doc = consortium_status.status(a.state)
            print(json.dumps(doc, indent=2) if a.json else consortium_status.render(doc))
        else:
            done = run(a.pki, a.state, a.run_config, a.timeout, a.resume)
            print(json.dumps({k: done.get(k) for k in ("run-id", "status", "status-details", "elapsed", "run-dir")}))
            return 0 if done["status"] == "finished:completed" else 1
    except (FileNotFoundError, RuntimeError, TimeoutError, RegistryError, PKIError, ValueError, OSError) as exc:
        print(f"uharmony-coordinator: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``uharmony-coordinator``: run the consortium's SuperLink, with a closed control plane and signed apps.

    uharmony-coordinator start      --pki pki --state state [--host 0.0.0.0] [--port 9092]
    uharmony-coordinator register   --state state --site hospital-a --domain 0 --public-key auth.pub
    uharmony-coordinator unregister --state state --site hospital-a
    uharmony-coordinator publish    --pki pki --state state [--app .]
    uharmony-coordinator run        --pki pki --state state [-c "num-server-rounds=20"]

``start`` runs three things and stops them together: the real ``flower-superlink`` (TLS, SuperNode
authentication, a state database) listening on 127.0.0.1 only; the gateway (nginx, ``server/gateway.py``)
on ``--host:--port`` that forwards the Fleet API and refuses everything else; and the app registry
(``server/app_registry.py``) that hands the SuperLink the coordinator's signed app. ``register`` and
``run`` use the SuperLink's local address (``FLWR_HOME=<state>/flwr``), so only this machine can
register nodes or submit runs. ``run`` submits the latest published (signed) app and passes the ServerApp
the site registry (which key is which site and domain) and the key it signs model manifests with.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import app_registry, gateway
from .registry import RegistryError, SiteRegistry

CONNECTION = "consortium"


def flwr_env(state: Path, registry_port: int | None = None) -> dict:
    env = dict(os.environ)
    env["FLWR_HOME"] = str((state / "flwr").resolve())
    # the apps run in this environment; Flower would otherwise `uv sync` their dependencies per run
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")  # the ServerApp's start waits for this poll
    if registry_port is not None:  # the SuperLink fetches published apps from the coordinator's registry
        env["FLWR_SUPERGRID_API_URL"] = f"http://127.0.0.1:{registry_port}"
    return env


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


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise FileNotFoundError(f"{name} not found on PATH (activate the project's .venv)")
    return exe


def superlink_command(pki: Path, state: Path, port: int) -> list[str]:
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        if not (pki / name).is_file():
            raise FileNotFoundError(f"{pki / name}: missing; create it with uharmony-pki")
    return [
        _exe("flower-superlink"),
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


def start(pki: Path, state: Path, host: str, port: int, superlink_port: int, registry_port: int) -> int:
    """Run the SuperLink (loopback), the gateway (public) and the app registry until one of them ends."""
    write_connection(state, superlink_port, pki / "ca.crt")
    commands = {
        "superlink": superlink_command(pki, state, superlink_port),
        "gateway": gateway.nginx_command(gateway.nginx_config(pki, state, host, port, superlink_port)),
    }
    registry = app_registry.serve(state, registry_port)
    procs = {name: subprocess.Popen(cmd, env=flwr_env(state, registry_port)) for name, cmd in commands.items()}
    print(
        f"SuperLink on 127.0.0.1:{superlink_port} (control plane: this machine only); gateway on {host}:{port} "
        f"(Fleet API only); app registry on 127.0.0.1:{registry_port}",
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
    return code or 0


def _flwr(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_exe("flwr"), *args], env=flwr_env(state), capture_output=True, text=True)


def _last_error(res: subprocess.CompletedProcess) -> str:
    lines = [line.strip("│╭╰─ ").strip() for line in (res.stdout + res.stderr).splitlines()]
    lines = [x for x in lines if x and not set(x) <= set("─│╭╮╰╯ ")]
    return lines[-1] if lines else f"exit {res.returncode}"


def register(state: Path, site: str, domain: int, public_key: Path) -> str:
    """Record the site's key and domain, then register the key with the SuperLink under the site's name."""
    try:
        text = public_key.read_text()
    except OSError as exc:
        raise RegistryError(f"{public_key}: cannot read the site's public key ({exc.strerror})") from None
    SiteRegistry(state / "registry.json").add(site, domain, text)
    res = _flwr(state, "supernode", "register", str(public_key), CONNECTION, "--name", site)
    if res.returncode == 0:
        return "registered"
    if "already in use" in (res.stdout + res.stderr).lower():  # idempotent
        return "already registered"
    raise RuntimeError(f"flwr supernode register: {_last_error(res)}")


def unregister(state: Path, site: str) -> str:
    """Revoke the site: the ServerApp stops admitting its key, and the SuperLink forgets its node."""
    SiteRegistry(state / "registry.json").revoke(site)
    res = _flwr(state, "supernode", "list", CONNECTION, "--format", "json")
    try:
        nodes = json.loads(res.stdout).get("nodes", [])
    except json.JSONDecodeError:
        raise RuntimeError(f"flwr supernode list: {_last_error(res)}") from None
    ids = [n.get("node-id") for n in nodes if n.get("name") == site or n.get("owner-name") == site]
    for node_id in ids:
        out = _flwr(state, "supernode", "unregister", str(node_id), CONNECTION)
        if out.returncode != 0:
            raise RuntimeError(f"flwr supernode unregister {node_id}: {_last_error(out)}")
    return f"revoked; {len(ids)} SuperLink node(s) unregistered"


def submit_and_wait(pki: Path, state: Path, run_config: str = "", timeout: float = 3600, poll: float = 2.0) -> dict:
    """``flwr run`` of the latest published (signed) app, then poll ``flwr ls`` until the run ends."""
    app = app_registry.latest(state)
    extra = (
        f"site-registry='{(state / 'registry.json').resolve()}' model-signing-key='{(pki / 'signing.key').resolve()}'"
    )
    res = _flwr(
        state,
        "run",
        f"{app['app_id']}=={app['version']}",
        CONNECTION,
        "--format",
        "json",
        "-c",
        f"{run_config} {extra}".strip(),
    )
    try:
        run_id = str(json.loads(res.stdout)["run-id"])
    except (json.JSONDecodeError, KeyError):
        raise RuntimeError(f"flwr run failed: {res.stdout}{res.stderr}") from None
    deadline = time.time() + timeout
    while time.time() < deadline:
        ls = _flwr(state, "ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            runs = json.loads(ls.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        if runs and str(runs[0]["status"]).startswith("finished"):
            return runs[0]
        time.sleep(poll)
    raise TimeoutError(f"run {run_id} did not finish within {timeout} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-coordinator", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="run the SuperLink (loopback), the gateway (public) and the app registry")
    s.add_argument("--host", default="0.0.0.0", help="public interface of the gateway (SuperNodes connect here)")
    s.add_argument("--port", type=int, default=9092, help="public port of the gateway")
    s.add_argument("--superlink-port", type=int, default=None, help="the SuperLink's loopback port (default port+1)")
    s.add_argument("--registry-port", type=int, default=None, help="the app registry's loopback port (default port+2)")
    r = sub.add_parser("register", help="register a site's public key for a site name and domain")
    r.add_argument("--site", required=True)
    r.add_argument("--domain", type=int, required=True)
    r.add_argument("--public-key", type=Path, required=True, help="the site's auth.pub (uharmony-site keygen)")
    x = sub.add_parser("unregister", help="revoke a site")
    x.add_argument("--site", required=True)
    b = sub.add_parser("publish", help="build and sign the app the SuperNodes will run")
    b.add_argument("--app", type=Path, default=Path(__file__).resolve().parents[1])
    u = sub.add_parser("run", help="run the latest published app and wait for its final status")
    u.add_argument("-c", "--run-config", default="")
    for sp in (s, b, u):
        sp.add_argument("--pki", type=Path, required=True)
    for sp in (s, r, x, b, u):
        sp.add_argument("--state", type=Path, required=True)
    a = p.parse_args(argv)
    a.state.mkdir(parents=True, exist_ok=True)
    try:
        if a.cmd == "start":
            return start(a.pki, a.state, a.host, a.port, a.superlink_port or a.port + 1, a.registry_port or a.port + 2)
        if a.cmd == "register":
            print(f"{a.site}: {register(a.state, a.site, a.domain, a.public_key)} (domain {a.domain})")
        elif a.cmd == "unregister":
            print(f"{a.site}: {unregister(a.state, a.site)}")
        elif a.cmd == "publish":
            rec = app_registry.publish(a.app, a.pki, a.state)
            print(
                f"published {rec['app_id']}=={rec['version']} sha256 {rec['sha256'][:16]}... signed by "
                f"{rec['verifications'][0]['public_key_id']}"
            )
        else:
            run = submit_and_wait(a.pki, a.state, a.run_config)
            print(json.dumps({k: run.get(k) for k in ("run-id", "status", "status-details", "elapsed")}))
            return 0 if run["status"] == "finished:completed" else 1
    except (FileNotFoundError, RuntimeError, TimeoutError, RegistryError, ValueError) as exc:
        print(f"uharmony-coordinator: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``uharmony-coordinator``: run the consortium's Flower SuperLink with TLS and SuperNode authentication.

    uharmony-coordinator start    --pki pki --state state [--host 0.0.0.0] [--port 9091]
    uharmony-coordinator register --pki pki --state state        # registers every site's public key
    uharmony-coordinator run      --state state [-c "num-server-rounds=20"]   # submits `flwr run` + waits

``start`` execs the real ``flower-superlink`` (foreground, for systemd or a container). Since Flower 1.41
the SuperLink serves the Fleet API (SuperNodes) and the Control API (the ``flwr`` CLI) on one HTTPS port. It writes the
Flower CLI connection ``consortium`` (the SuperLink's local HTTPS API + CA certificate) to ``<state>/flwr/config.toml``;
``register`` and ``run`` use it with ``FLWR_HOME=<state>/flwr``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .pki import site_public_keys

CONNECTION = "consortium"


def flwr_env(state: Path) -> dict:
    env = dict(os.environ)
    env["FLWR_HOME"] = str((state / "flwr").resolve())
    # the apps run in this environment; Flower would otherwise `uv sync` their dependencies per run
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def write_connection(state: Path, port: int, ca: Path) -> Path:
    """The Flower CLI talks to the SuperLink's HTTPS API on this machine."""
    home = state / "flwr"
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config.toml"
    cfg.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca.resolve()}"\n'
    )
    return cfg


def superlink_command(pki: Path, state: Path, host: str, port: int) -> list[str]:
    for name in ("ca.crt", "superlink.crt", "superlink.key"):
        if not (pki / name).is_file():
            raise FileNotFoundError(f"{pki / name}: missing; create it with uharmony-pki")
    exe = shutil.which("flower-superlink")
    if exe is None:
        raise FileNotFoundError("flower-superlink not found on PATH (activate the project's .venv)")
    return [
        exe,
        "--ssl-ca-certfile",
        str(pki / "ca.crt"),
        "--ssl-certfile",
        str(pki / "superlink.crt"),
        "--ssl-keyfile",
        str(pki / "superlink.key"),
        "--enable-supernode-auth",
        "--database",
        str(state / "superlink.db"),
        "--host",
        host,
        "--port",
        str(port),
        "--log-file",
        str(state / "superlink.log"),
    ]


def register(pki: Path, state: Path) -> dict[str, str]:
    """Register every site's public key; returns {site: 'registered' | error text}."""
    out = {}
    keys = site_public_keys(pki)
    if not keys:
        raise FileNotFoundError(f"{pki / 'sites'}: no site keys; create them with `uharmony-pki site-key`")
    for site, pub in keys.items():
        res = subprocess.run(
            ["flwr", "supernode", "register", str(pub), CONNECTION, "--name", site],
            env=flwr_env(state),
            capture_output=True,
            text=True,
        )
        text = (res.stdout + res.stderr).strip()
        if res.returncode == 0:
            out[site] = "registered"
        elif "already in use" in text.lower():  # idempotent: registering twice is not an error
            out[site] = "already registered"
        else:
            errors = [line.strip("│ ") for line in text.splitlines() if line.strip("│╭╰─ ")]
            out[site] = errors[-1] if errors else f"exit {res.returncode}"
    return out


def submit_and_wait(app: Path, state: Path, run_config: str = "", timeout: float = 3600, poll: float = 2.0) -> dict:
    """``flwr run`` on the consortium SuperLink, then poll ``flwr ls`` until the run ends; returns its record."""
    env = flwr_env(state)
    cmd = ["flwr", "run", str(app), CONNECTION, "--format", "json"] + (["-c", run_config] if run_config else [])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    try:
        run_id = str(json.loads(res.stdout)["run-id"])
    except (json.JSONDecodeError, KeyError):
        raise RuntimeError(f"flwr run failed: {res.stdout}{res.stderr}") from None
    deadline = time.time() + timeout
    while time.time() < deadline:
        ls = subprocess.run(
            ["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"], env=env, capture_output=True, text=True
        )
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
    s = sub.add_parser("start", help="exec flower-superlink with TLS, SuperNode auth and a state database")
    s.add_argument("--host", default="0.0.0.0", help="interface the SuperLink's HTTPS API listens on")
    s.add_argument("--port", type=int, default=9091, help="port of the SuperLink's HTTPS API")
    r = sub.add_parser("register", help="register every site public key found in the PKI folder")
    u = sub.add_parser("run", help="submit the app (default: this project) and wait for its final status")
    u.add_argument("--app", type=Path, default=Path(__file__).resolve().parents[1])
    u.add_argument("-c", "--run-config", default="")
    for sp in (s, r):
        sp.add_argument("--pki", type=Path, required=True)
    for sp in (s, r, u):
        sp.add_argument("--state", type=Path, required=True)
    a = p.parse_args(argv)
    a.state.mkdir(parents=True, exist_ok=True)
    try:
        if a.cmd == "start":
            cmd = superlink_command(a.pki, a.state, a.host, a.port)
            write_connection(a.state, a.port, a.pki / "ca.crt")
            print(" ".join(cmd), flush=True)
            os.execve(cmd[0], cmd, flwr_env(a.state))
        elif a.cmd == "register":
            results = register(a.pki, a.state)
            for site, outcome in results.items():
                print(f"{site}: {outcome}")
            return 0 if all(v.endswith("registered") for v in results.values()) else 1
        else:
            run = submit_and_wait(a.app, a.state, a.run_config)
            print(json.dumps({k: run.get(k) for k in ("run-id", "status", "status-details", "elapsed")}))
            return 0 if run["status"] == "finished:completed" else 1
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"uharmony-coordinator: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

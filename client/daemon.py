"""``uharmony-site``: a hospital's key, pre-flight check and Flower SuperNode.

    uharmony-site keygen --dir /etc/uharmony            # auth.key stays here; send auth.pub to the coordinator
    uharmony-site preflight --data /data/brats-site --site-id hospital-a
    uharmony-site start --config site.toml

``site.toml``::

    [site]
    site-id = "hospital-a"
    domain-id = 0                       # assigned by the coordinator
    data = "/data/brats-site"           # case folders in BraTS naming (+ optional site.json)
    state-dir = "/var/lib/uharmony"     # site-local parameters + harmonization statistics
    superlink = "superlink.example.org:9092"
    ca = "/etc/uharmony/ca.crt"          # from the coordinator
    trusted-entities = "/etc/uharmony/trusted-entities.yaml"   # from the coordinator: run only apps it signed
    key = "/etc/uharmony/auth.key"      # from `uharmony-site keygen`; never leaves the site
    port = 9094                         # local ClientApp API port
    max-retries = 10                    # connection attempts before giving up (optional)
    max-wait-time = 300                 # seconds of retrying before giving up (optional)
    worker = true                       # the long-lived site worker (client/worker.py); false: none
    rejoin-seconds = 150                # after a crash: how long to retry while the SuperLink frees the old connection

``start`` validates the data folder first, then runs the real ``flower-supernode`` with TLS, the
site's authentication key, ``--trusted-entities`` (the SuperNode refuses any app the coordinator did not
sign) and ``--node-config`` (data-path, site-id, domain-id, state-dir), beside the site worker that keeps
torch, MONAI and the site's code loaded between messages. It stops both together and exits with the
SuperNode's status; a worker that dies is started again (the ClientApp does the work itself meanwhile).
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
import tomllib
from pathlib import Path

from .keys import generate_node_key
from .worker import SOCKET_ENV

REQUIRED = ("site-id", "data", "superlink", "ca", "key", "trusted-entities")


POLL_ENV, POLL_SECONDS = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"
REJOIN_SECONDS, REJOIN_RETRY = 150.0, 3.0


def preflight(data: Path, site_id: str) -> dict:
    """Read every case once: cases found, modalities, label values, problems (file + reason)."""
    from uharmony.data import DataError, load_site_folder, read_case  # torch and MONAI: only when reading scans

    site = load_site_folder(data, site_id)
    report = {
        "site": site_id,
        "data": str(data),
        "declared_modalities": list(site.modalities),
        "label_protocol": site.label_map,
        "regions": list(site.region_names),
        "cases": len(site.cases),
        "usable": 0,
        "label_values": [],
        "problems": list(site.skipped),
    }
    values: set[int] = set()
    for case in site.cases:
        try:
            item = read_case(case, site.modalities)
        except DataError as exc:
            report["problems"].append({"case": case.case_id, "file": exc.path, "reason": exc.reason})
            continue
        report["usable"] += 1
        if "label" in item:
            values.update(int(v) for v in item["label"].unique().tolist())
    report["label_values"] = sorted(values)
    return report


def load_site_config(path: Path) -> dict:
    try:
        cfg = tomllib.loads(path.read_text()).get("site", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read site config ({exc})") from None
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"{path}: [site] lacks {missing}")
    for key in ("ca", "key", "trusted-entities"):
        if not Path(cfg[key]).is_file():
            raise ValueError(f"{path}: {key} = {cfg[key]!r} is not a file")
    return cfg


def supernode_command(cfg: dict) -> list[str]:
    exe = shutil.which("flower-supernode")
    if exe is None:
        raise ValueError("flower-supernode not found on PATH (activate the project's .venv)")
    state = cfg.get("state-dir", str(Path(cfg["data"]) / ".uharmony-state"))
    node_config = (
        f"data-path='{Path(cfg['data']).resolve()}' site-id='{cfg['site-id']}' "
        f"domain-id={int(cfg.get('domain-id', 0))} state-dir='{Path(state).resolve()}'"
    )
    return [
        exe,
        "--superlink",
        cfg["superlink"],
        "--root-certificates",
        str(cfg["ca"]),
        "--auth-supernode-private-key",
        str(cfg["key"]),
        "--trusted-entities",
        str(cfg["trusted-entities"]),
        "--node-config",
        node_config,
        "--port",
        str(int(cfg.get("port", 9094))),
        "--max-retries",
        str(int(cfg.get("max-retries", 10))),
    ] + (["--max-wait-time", str(float(cfg["max-wait-time"]))] if "max-wait-time" in cfg else [])


def _start_worker(sock: Path, env: dict) -> subprocess.Popen:
    """The site worker, started beside the SuperNode (not waited for: until its socket answers, the
    ClientApp processes do the work themselves)."""
    return subprocess.Popen([sys.executable, "-m", "client.worker", "--socket", str(sock)], env=env)


WORKER_RESTARTS = 3  # a worker that keeps dying (e.g. another one serves this state folder) is left off


def run_site(cfg: dict) -> int:
    """The SuperNode and the site worker, stopped together; returns the SuperNode's exit status."""
    cmd = supernode_command(cfg)
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    # the SuperNode's executor looks for new messages every second by default: each message waits for that
    # poll before its ClientApp process starts
    env.setdefault(POLL_ENV, POLL_SECONDS)
    worker, sock = (
        None,
        Path(cfg.get("state-dir", str(Path(cfg["data"]) / ".uharmony-state"))).resolve() / "worker.sock",
    )
    if cfg.get("worker", True):
        env.pop(SOCKET_ENV, None)
        worker = _start_worker(sock, env)
        env[SOCKET_ENV] = str(sock)
    print(" ".join(cmd), flush=True)
    node = subprocess.Popen(cmd, env=env)
    stop = {"signal": None}

    def handle(signum, _frame):
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    # A site restarted after a crash (it has trained: its local state exists) may be refused activation
    # until the SuperLink notices the old connection is gone (two missed 30-s heartbeats): keep trying.
    rejoin_until, restarts = time.time() + float(cfg.get("rejoin-seconds", REJOIN_SECONDS)), 0
    has_trained = (sock.parent / "local_state.pt").exists()
    while stop["signal"] is None:
        if node.poll() is not None:
            if node.returncode == 0 or not has_trained or time.time() > rejoin_until:
                break
            print(
                f"uharmony-site: the SuperNode exited with {node.returncode}; the SuperLink may still hold this "
                f"site's previous connection; trying again in {REJOIN_RETRY:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(REJOIN_RETRY)
            node = subprocess.Popen(cmd, env=env)
        if worker is not None and worker.poll() is not None:
            restarts += 1
            if restarts > WORKER_RESTARTS:
                print("uharmony-site: the site worker keeps exiting; messages run in-process", file=sys.stderr)
                worker = None
            else:
                print(f"uharmony-site: the site worker exited with {worker.returncode}; restarting", file=sys.stderr)
                worker = _start_worker(sock, {k: v for k, v in env.items() if k != SOCKET_ENV})
        time.sleep(0.5)
    for proc in (node, worker):
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in (node, worker):
        if proc is None:
            continue
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return node.returncode if stop["signal"] is None else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-site", description="Hospital-side commands")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("preflight", help="validate a site's data folder and print a report")
    f.add_argument("--data", type=Path, required=True)
    f.add_argument("--site-id", default="site")
    s = sub.add_parser("start", help="pre-flight, then exec flower-supernode")
    s.add_argument("--config", type=Path, required=True)
    k = sub.add_parser("keygen", help="make this site's SuperNode key pair; send only auth.pub to the coordinator")
    k.add_argument("--dir", type=Path, required=True)
    k.add_argument("--site-id", default="")
    k.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.cmd == "keygen":
            priv, pub = generate_node_key(a.dir, a.site_id, a.force)
            print(f"private key {priv} (mode 0600, stays here); send {pub} to the coordinator")
            return 0
        if a.cmd == "preflight":
            report = preflight(a.data, a.site_id)
        else:
            cfg = load_site_config(a.config)
            report = preflight(Path(cfg["data"]), cfg["site-id"])
        print(json.dumps(report, indent=2), flush=True)
        if report["usable"] == 0:
            print("uharmony-site: error: no usable case; fix the problems above", file=sys.stderr)
            return 1
        if a.cmd == "start":
            return run_site(cfg)
    except ValueError as exc:  # DataError included
        print(f"uharmony-site: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

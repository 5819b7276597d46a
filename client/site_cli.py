"""``uharmony-site``: a hospital's key, pre-flight check and Flower SuperNode.

    uharmony-site keygen --dir /etc/uharmony            # auth.key stays here; send auth.pub to the coordinator
    uharmony-site preflight --data /data/brats-site --site-id hospital-a
    uharmony-site start --config site.toml

``site.toml`` (every key, its type, default and meaning: ``docs/site-toml.md``, from ``client/site_config.py``)::

    [site]
    site-id = "hospital-a"                   # as the coordinator registered it
    domain-id = 0                            # as the coordinator registered it
    data = "/data/brats-site"                # case folders in BraTS naming (+ optional site.json)
    state-dir = "/var/lib/uharmony"
    superlink = "superlink.example.org:9092"
    ca = "/etc/uharmony/ca.crt"
    trusted-entities = "/etc/uharmony/trusted-entities.yaml"
    key = "/etc/uharmony/auth.key"
    min-report-cases = 5

``start`` validates the data folder first, then runs the real ``flower-supernode`` (through
``client/guarded_supernode.py``) with TLS, the site's authentication key, ``--trusted-entities`` (the
SuperNode refuses any app the coordinator did not sign) and ``--node-config`` (data-path, site-id, domain-id,
state-dir, min-report-cases), beside the site worker that keeps torch, MONAI and the site's code loaded
between messages. The SuperNode's Runtime API on 127.0.0.1:``port`` (a free port unless set) answers only this
site's account (and root); a SuperNode that stopped talking to the SuperLink exits and is started again.
Everything the site writes is its account's alone (umask 077; the state folder is made 0700 at every start).
It stops the SuperNode and the worker together and exits with the SuperNode's status; a worker that dies is
started again (the ClientApp does the work itself meanwhile).
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

from uharmony.files import private_dir, private_tree

from .guarded_supernode import CONNECTION_LOST, IDLE_POLL_SECONDS
from .keys import generate_node_key
from .site_config import free_port, load_site_config
from .worker import SOCKET_ENV

POLL_ENV, POLL_SECONDS = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"
REJOIN_SECONDS, REJOIN_RETRY, REJOIN_MAX_WAIT = 150.0, 3.0, 15.0  # the wait doubles from 3 s up to 15 s


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


def site_accounts() -> list[int]:
    """The accounts that may use the SuperNode's Runtime API: the site's own (the one running
    ``uharmony-site``) and root."""
    return sorted({os.geteuid(), 0})


def state_dir(cfg: dict) -> Path:
    return Path(cfg.get("state-dir", str(Path(cfg["data"]) / ".uharmony-state"))).resolve()


def supernode_command(cfg: dict) -> list[str]:
    """Flower's SuperNode, through ``client.guarded_supernode`` (its Runtime API serves only this site's
    account; it exits when its connection to the SuperLink has ended)."""
    if shutil.which("flower-supernode") is None or shutil.which("flower-superexec") is None:
        raise ValueError("flower-supernode / flower-superexec not found on PATH (activate the project's .venv)")
    node_config = (
        f"data-path='{Path(cfg['data']).resolve()}' site-id='{cfg['site-id']}' "
        f"domain-id={int(cfg.get('domain-id', 0))} state-dir='{state_dir(cfg)}'"
    )
    # the site's own privacy floor (uharmony.federation.site_round): the run cannot lower it
    if "min-report-cases" in cfg:
        node_config += f" min-report-cases={int(cfg['min-report-cases'])}"
    accounts = [arg for uid in site_accounts() for arg in ("--account", str(uid))]
    return [
        sys.executable,
        "-m",
        "client.guarded_supernode",
        *accounts,
        "--idle-poll",
        str(float(cfg.get("idle-poll", IDLE_POLL_SECONDS))),
        "--",
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
        str(int(cfg.get("port") or free_port())),  # unset: a free one (never another site's or the coordinator's)
        "--max-retries",
        str(int(cfg.get("max-retries", 10))),
    ] + (["--max-wait-time", str(float(cfg["max-wait-time"]))] if "max-wait-time" in cfg else [])


def site_env(cfg: dict) -> dict:
    """The environment of the site's processes (SuperNode, its SuperExec and ClientApps, the worker)."""
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    # the SuperNode's executor looks for new messages every second by default: each message waits for that
    # poll before its ClientApp process starts
    env.setdefault(POLL_ENV, POLL_SECONDS)
    if "threads" in cfg:  # read by torch at import, in the worker and in every ClientApp process
        env["OMP_NUM_THREADS"] = str(int(cfg["threads"]))
    return env


def make_private(folder: Path) -> None:
    """``folder`` and everything in it this account's only (0700 folders,
    0600 files; a site's state holds preprocessed scans and labels, per-case Dice and its statistics)."""
    private_tree(private_dir(folder))


def _start_worker(sock: Path, env: dict) -> subprocess.Popen:
    """The site worker, started beside the SuperNode (not waited for: until its socket answers, the
    ClientApp processes do the work themselves)."""
    return subprocess.Popen([sys.executable, "-m", "client.worker", "--socket", str(sock)], env=env)


WORKER_RESTARTS = 3  # a worker that keeps dying (e.g. another one serves this state folder) is left off


def run_site(cfg: dict) -> int:
    """The SuperNode and the site worker, stopped together; returns the SuperNode's exit status.

    The SuperNode is started again (after 3, 6, 12, then every 15 s, for ``rejoin-seconds``) when it exits
    after losing its connection to the SuperLink (``CONNECTION_LOST``), or after a crash of a site that has
    trained before: the SuperLink may still hold its previous connection (until it misses two 30-s
    heartbeats) and refuses the new one meanwhile."""
    cmd = supernode_command(cfg)
    env = site_env(cfg)
    sock = state_dir(cfg) / "worker.sock"
    make_private(sock.parent)
    worker = None
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
    rejoin = float(cfg.get("rejoin-seconds", REJOIN_SECONDS))
    rejoin_until, restarts, attempt = time.time() + rejoin, 0, 0
    # a site restarted after a crash (it has trained: its local state exists) may be refused activation until
    # the SuperLink notices the old connection is gone (two missed 30-s heartbeats): keep trying
    was_connected = (sock.parent / "local_state.pt").exists()
    while stop["signal"] is None:
        if node.poll() is not None:
            if node.returncode == CONNECTION_LOST:  # the watchdog's case: connected, then Flower gave up
                was_connected, rejoin_until, attempt = True, time.time() + rejoin, 0
                why = "stopped talking to the SuperLink"
            elif node.returncode == 0 or not was_connected or time.time() > rejoin_until:
                break
            else:
                why = f"exited with {node.returncode}; the SuperLink may still hold this site's previous connection"
            wait, attempt = min(REJOIN_RETRY * 2**attempt, REJOIN_MAX_WAIT), attempt + 1
            print(f"uharmony-site: the SuperNode {why}; starting it again in {wait:g} s", file=sys.stderr, flush=True)
            time.sleep(wait)
            node = subprocess.Popen(supernode_command(cfg), env=env)  # (a free port again, unless site.toml sets one)
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
    f.add_argument("--data", type=Path, required=True, help="the site's data folder (case folders, site.json)")
    f.add_argument("--site-id", default="site", help="the site's name in the report")
    s = sub.add_parser("start", help="pre-flight, then run the SuperNode and the site worker")
    s.add_argument("--config", type=Path, required=True, help="the site's site.toml (docs/site-toml.md)")
    k = sub.add_parser("keygen", help="make this site's SuperNode key pair; send only auth.pub to the coordinator")
    k.add_argument("--dir", type=Path, required=True, help="where auth.key and auth.pub are written")
    k.add_argument("--site-id", default="", help="a comment in auth.pub naming the site")
    k.add_argument("--force", action="store_true", help="replace an existing key pair")
    a = p.parse_args(argv)
    os.umask(0o077)  # every file this site writes (state, scans, statistics, logs) is its account's alone
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

"""A consortium on 127.0.0.1 with the real processes a deployment runs.

The coordinator's ``uharmony-coordinator start`` (the SuperLink behind its gateway, the app registry),
hospitals' ``uharmony-site start`` (SuperNodes with TLS and their own keys), runs submitted with
``uharmony-coordinator run``: the same commands the README gives, each in its own process group, so a
test can kill any of them as a crash would. Used by the deployment tests, the fault tests and the
deployed-vs-simulated measurement (``python -m simulation.deployment``).

    python -m simulation.deployment measure --out docs/results/deployment.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
# the run the measurement and the fault tests use: tiny volumes, two rounds unless told otherwise
TINY_RUN = "local-steps=2 patch-size=16 filters='8,16,32' spacing=6.0 batch-size=1"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...), read from ``/proc``; whatever session they are in."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalConsortium:
    """Everything lives under ``root``: ``pki/``, ``state/`` (the coordinator's), ``keys/<site>/``,
    ``data/<site>/``, ``state-<site>/`` and one ``<name>.log`` per process."""

    def __init__(self, root: Path, app: Path = REPO, site_keys: str = "", site_threads: int | None = None) -> None:
        self.root, self.app = Path(root), Path(app)
        # every hospital shares this machine: a site with all its cores (torch's default) would oversubscribe them
        # (3 sites on 2 cores: each message's work 3-5x slower); ``site_keys``: more site.toml lines for every site
        # (0: leave ``threads`` unset, torch's default of every core in each site)
        self.site_threads = max(1, (os.cpu_count() or 1) // 4) if site_threads is None else int(site_threads)
        self.site_keys = (f"threads = {self.site_threads}\n" if self.site_threads else "") + site_keys
        self.root.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.port, self.link = free_port(), free_port()

    # -- processes ------------------------------------------------------------------------------
    def env(self, **extra) -> dict:
        env = dict(
            os.environ,
            PATH=f"{BIN}:{os.environ['PATH']}",
            FLWR_HOME=str(self.root / "flwr-home"),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            PYTHONWARNINGS="ignore",
        )
        return {**env, **extra}

    def cmd(self, *args, timeout: float = 120, check: bool = True, env: dict | None = None):
        res = subprocess.run(
            [str(BIN / args[0]), *map(str, args[1:])],
            env=env or self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def spawn(self, name: str, *args, env: dict | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 - the process writes to it while it lives
        proc = subprocess.Popen(
            [str(BIN / args[0]), *map(str, args[1:])],
            env=env or self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 30) -> None:
        """Stop a process and all its descendants (SIGKILL: as a crash or a power cut would). Flower starts
        its SuperExec, ServerApp and ClientApp processes in sessions of their own, which a signal to the
        process group misses: a ServerApp left running would write a checkpoint after the "crash"."""
        proc = self.procs.pop(name)
        family = descendants(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the coordinator ------------------------------------------------------------------------
    def init_pki(self, passphrase: str = "a long consortium passphrase") -> None:
        (self.root / "ca-pass").write_text(passphrase + "\n")
        self.cmd("uharmony-pki", "init-ca", "--dir", "pki", "--passphrase-file", "ca-pass")
        self.cmd("uharmony-pki", "server-cert", "--dir", "pki", "--dns", "superlink.example.org",
                 "--passphrase-file", "ca-pass")  # fmt: skip

    def start_coordinator(self) -> subprocess.Popen:
        """The SuperLink (its database in ``state/``, kept across restarts), gateway and app registry. Started
        as root (tests, CI), the gateway's workers run as ``uharmony-gateway``, made here if missing."""
        if os.geteuid() == 0:
            ensure_account("uharmony-gateway")
        return self.spawn(
            "coordinator", "uharmony-coordinator", "start", "--pki", "pki", "--state", "state", "--host",
            "127.0.0.1", "--port", self.port, "--superlink-port", self.link,
        )  # fmt: skip

    def wait_superlink(self, timeout: float = 120) -> None:
        """Until the SuperLink answers on its loopback control address (after a (re)start)."""
        env = self.env(FLWR_HOME=str(self.root / "state" / "flwr"))
        wait_for(
            lambda: self.cmd("flwr", "ls", "consortium", check=False, env=env).returncode == 0, timeout, "the SuperLink"
        )

    def nodes(self) -> dict[str, str]:
        """Node id -> status (``online``, ``offline``, ``unregistered``...), as the SuperLink sees them."""
        env = self.env(FLWR_HOME=str(self.root / "state" / "flwr"))
        res = self.cmd("flwr", "supernode", "list", "consortium", "--format", "json", env=env, check=False)
        try:
            return {n["node-id"]: n["status"] for n in json.loads(res.stdout).get("nodes", [])}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return {}

    def online(self, names) -> bool:
        """Every named site's node (its id from its SuperNode's log) is online at the SuperLink."""
        status = self.nodes()
        ids = [re.findall(r"SuperNode ID: (\d+)", self.log(n)) for n in names]
        return all(found and status.get(found[-1]) == "online" for found in ids)

    def wait_online(self, names, timeout: float = 180) -> None:
        """Until every named site is online (a run submitted earlier may start its first round without one)."""
        wait_for(lambda: self.online(names), timeout, f"{', '.join(names)} online", poll=2)

    def register(self, site: str, domain: int, key: str | None = None, tries: int = 60) -> None:
        """Register ``keys/<key or site>/auth.pub`` for ``site`` (retried until the SuperLink is up)."""
        for _ in range(tries):
            res = self.cmd("uharmony-coordinator", "register", "--state", "state", "--site", site, "--domain",
                           domain, "--public-key", f"keys/{key or site}/auth.pub", check=False)  # fmt: skip
            if res.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"register {site}: {res.stdout}{res.stderr}")

    def publish(self) -> str:
        """Build and sign the app (the app-signing key's passphrase from ``ca-pass``)."""
        return self.cmd("uharmony-coordinator", "publish", "--pki", "pki", "--state", "state", "--app", self.app,
                        "--passphrase-file", "ca-pass", timeout=300).stdout  # fmt: skip

    def submit(self, run_config: str, name: str = "coordinator-run") -> subprocess.Popen:
        return self.spawn(name, "uharmony-coordinator", "run", "--pki", "pki", "--state", "state", "-c", run_config)

    # -- hospitals ------------------------------------------------------------------------------
    def keygen(self, name: str) -> Path:
        self.cmd("uharmony-site", "keygen", "--dir", f"keys/{name}", "--site-id", name)
        return self.root / "keys" / name / "auth.key"

    def site_folders(self, sites: int = 3, cases: int = 3, seed: int = 0) -> list[Path]:
        """Hospitals' data folders (case folders + site.json) made from a generated federation's sites."""
        from simulation.synth import generate_federation
        from uharmony.data import load_federation

        generate_federation(self.root / "fed", sites=sites, cases_per_site=cases, seed=seed, spacing=6.0,
                            progress=False)  # fmt: skip
        folders = []
        for site in load_federation(self.root / "fed").sites:
            folder = self.root / "data" / f"s{site.name}"
            folder.mkdir(parents=True, exist_ok=True)
            for case in site.cases:
                (folder / case.case_id).symlink_to(self.root / "fed" / case.case_id)
            (folder / "site.json").write_text(
                json.dumps({"modalities": list(site.modalities), "labels": site.label_map})
            )
            folders.append(folder)
        return folders

    def site_config(
        self, name: str, domain: int, data: Path, key: Path, file: str | None = None, retries: int = 2, wait: int = 20
    ) -> Path:
        """A hospital's site.toml (``uharmony-site start --config``)."""
        path = self.root / f"{file or name}.toml"
        path.write_text(
            f'[site]\nsite-id = "{name}"\ndomain-id = {domain}\ndata = "{data}"\n'
            f'state-dir = "{self.root / ("state-" + (file or name))}"\nsuperlink = "127.0.0.1:{self.port}"\n'
            f'ca = "{self.root / "pki" / "ca.crt"}"\n'
            f'trusted-entities = "{self.root / "pki" / "trusted-entities.yaml"}"\n'
            f'key = "{key}"\nport = {free_port()}\nmax-retries = {retries}\nmax-wait-time = {wait}\n' + self.site_keys
        )
        return path

    def start_site(self, name: str, config: Path) -> subprocess.Popen:
        return self.spawn(name, "uharmony-site", "start", "--config", config)

    def consortium(self, sites: int = 3, cases: int = 3, retries: int = 2, wait: int = 20) -> list[str]:
        """PKI, coordinator, ``sites`` registered hospitals (domain i), the signed app, every SuperNode."""
        self.init_pki()
        names = [f"s{i + 1}" for i in range(sites)]
        for name in names:
            self.keygen(name)
        self.start_coordinator()
        for i, name in enumerate(names):
            self.register(name, i)
        self.publish()
        for i, folder in enumerate(self.site_folders(sites, cases)):
            key = self.root / "keys" / folder.name / "auth.key"
            self.start_site(folder.name, self.site_config(folder.name, i, folder, key, retries=retries, wait=wait))
        for name in names:  # as at a hospital, the SuperNodes are up before a run is submitted
            wait_for(lambda n=name: "SuperNode ID:" in self.log(n), 180, f"{name}'s SuperNode", self.procs[name])
        return names


def ensure_account(name: str) -> int:
    """The uid of the system account ``name``, made (no home, no login shell) if missing; needs root."""
    import pwd

    for _ in range(2):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:  # another process may be making it at the same time: look again
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                           capture_output=True)  # fmt: skip
    return pwd.getpwnam(name).pw_uid


def records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.5):
    """Poll ``predicate`` until it returns something true; fails after ``timeout`` s or when ``proc`` ends."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"waiting for {what}: the process ended with {proc.returncode}")
        time.sleep(poll)
    raise TimeoutError(f"waiting for {what}: more than {timeout:.0f} s")


def final_status(consortium: LocalConsortium, run: subprocess.Popen, name: str = "coordinator-run") -> dict:
    run.wait(timeout=900)
    out = consortium.log(name).strip().splitlines()
    return json.loads(out[-1]) if out and out[-1].startswith("{") else {"status": f"no status: {out[-3:]}"}


def measure(
    root: Path, rounds: int = 2, sites: int = 3, idle_poll: float | None = None, threads: int | None = None
) -> dict:
    """The same ``rounds`` tiny rounds deployed (real processes, TLS) and in Flower's simulation engine: wall
    seconds from submission to the final status, and their ratio. ``idle_poll``: the sites' ``idle-poll``
    (None: site.toml's default), ``threads`` theirs (None: ``LocalConsortium``'s default)."""
    from client.guarded_supernode import IDLE_POLL_SECONDS
    from simulation.runner import run as simulate

    run_cfg = f"num-server-rounds={rounds} {TINY_RUN} eval-every=1 num-domains={sites} min-sites={sites}"
    keys = "" if idle_poll is None else f"idle-poll = {float(idle_poll)}\n"
    with LocalConsortium(root / "deployed", site_keys=keys, site_threads=threads) as c:
        c.consortium(sites)
        t0 = time.time()
        status = final_status(c, c.submit(f"{run_cfg} run-dir='{root / 'deployed' / 'run'}'"))
        deployed = time.time() - t0
        if status.get("status") != "finished:completed":
            raise RuntimeError(f"the deployed run did not complete: {status}")
    recs = records(root / "deployed" / "run")
    requests = fleet_requests(root / "deployed" / "state" / "gateway" / "access.log")
    from flwr.common.config import parse_config_args

    overrides = {**parse_config_args([run_cfg]), "data-root": str(root / "deployed" / "fed")}
    overrides["run-dir"] = str(root / "simulated")
    sim = simulate(overrides, transport="flower")
    return {
        "rounds": rounds,
        "sites": sites,
        "idle-poll": IDLE_POLL_SECONDS if idle_poll is None else float(idle_poll),
        "site-threads": c.site_threads,
        "deployed-seconds": round(deployed, 1),
        "deployed-flower-elapsed": status.get("elapsed"),
        "simulated-seconds": sim["seconds"],
        "ratio": round(deployed / sim["seconds"], 2),
        "deployed-round-seconds": [r.get("seconds") for r in recs if r.get("event") == "train"],
        "fleet-requests": sum(requests.values()),
        "fleet-requests-by-endpoint": requests,
    }


def fleet_requests(access_log: Path) -> dict[str, int]:
    """Requests the SuperNodes made to the Fleet API through the gateway, per endpoint (nginx's access log)."""
    counts: dict[str, int] = {}
    for line in access_log.read_text().splitlines():
        parts = line.split('"')
        words = parts[1].split() if len(parts) > 2 else []
        if len(words) >= 2 and "/fleet/" in words[1]:
            name = words[1].split("?")[0].rsplit("/", 1)[-1]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.deployment", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="deployed vs simulated wall time on the same tiny rounds")
    m.add_argument("--root", type=Path, default=Path("runs/deployment"))
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--out", type=Path, default=None, help="append the figures (JSON lines) to this file")
    m.add_argument("--idle-poll", type=float, default=None, help="the sites' idle-poll (default: site.toml's)")
    m.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the sites' threads (default: cores // 4, at least 1; 0: all cores each)",
    )
    a = p.parse_args(argv)
    import shutil

    shutil.rmtree(a.root, ignore_errors=True)
    result = measure(a.root.resolve(), a.rounds, idle_poll=a.idle_poll, threads=a.threads)
    from simulation.kit.machine import commit, machine
    from uharmony.files import append_jsonl

    result.update(machine=machine(), cores=os.cpu_count(), time=time.ctime(), commit=commit())
    print(json.dumps(result), flush=True)
    if a.out:
        append_jsonl(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

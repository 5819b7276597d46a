"""Real SuperLink + SuperNodes on 127.0.0.1 with the project's PKI, TLS and SuperNode authentication.

Three hospitals start together; a fourth, post-operative one (ADC contrast, resection-cavity labels,
a new domain) starts its SuperNode only after round 1 and joins the running federation.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulation.synth import generate_federation
from simulation.synth.profiles import make_join_profile
from uharmony.data import load_federation

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp):
    return dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        FLWR_HOME=str(tmp / "flwr-home"),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONWARNINGS="ignore",
    )


def _cmd(tmp, *args, timeout=120, check=True):
    res = subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=timeout
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def _site_folders(tmp) -> list[Path]:
    """Three hospitals' data folders (case folders + site.json), from a generated federation's sites."""
    generate_federation(tmp / "fed", sites=3, cases_per_site=3, seed=0, spacing=6.0, progress=False)
    folders = []
    for site in load_federation(tmp / "fed").sites:
        folder = tmp / "data" / f"s{site.name}"
        folder.mkdir(parents=True)
        for case in site.cases:
            (folder / case.case_id).symlink_to(tmp / "fed" / case.case_id)
        (folder / "site.json").write_text(json.dumps({"modalities": list(site.modalities), "labels": site.label_map}))
        folders.append(folder)
    return folders


def _joining_site(tmp) -> Path:
    """Site s4: post-operative cases with ADC and BraTS 2024 labels (what the federation has not seen)."""
    fed = generate_federation(
        tmp / "fed4", 1, 3, seed=0, spacing=6.0, first_site=3, progress=False, profiles=[make_join_profile(0, 3)]
    )
    site = tmp / "data" / "s4"
    site.mkdir(parents=True)
    for case in (tmp / "fed4").glob("SYN_*"):
        (site / case.name).symlink_to(case)
    prof = fed["sites"]["4"]
    (site / "site.json").write_text(json.dumps({"modalities": prof["modalities"], "labels": prof["labels"]}))
    return site


def _site_config(tmp, name, domain, data, key, superlink_port) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        f'[site]\nsite-id = "{name}"\ndomain-id = {domain}\ndata = "{data}"\n'
        f'state-dir = "{tmp / ("state-" + name)}"\nsuperlink = "127.0.0.1:{superlink_port}"\n'
        f'ca = "{tmp / "pki" / "ca.crt"}"\nkey = "{key}"\nport = {_free_port()}\nmax-retries = 2\nmax-wait-time = 20\n'
    )
    return path


def test_tls_federation_with_authenticated_supernodes(tmp_path):
    tmp = tmp_path
    procs: list[subprocess.Popen] = []

    def spawn(name, *args):
        log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - the daemon writes to it until the test ends
        p = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=_env(tmp),
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        _cmd(tmp, "uharmony-pki", "init-ca", "--dir", "pki")
        _cmd(tmp, "uharmony-pki", "server-cert", "--dir", "pki", "--ip", "127.0.0.1", "--dns", "localhost")
        _cmd(
            tmp,
            "uharmony-pki",
            "site-key",
            "--dir",
            "pki",
            "--site",
            "s1",
            "--site",
            "s2",
            "--site",
            "s3",
            "--site",
            "s4",
        )
        _cmd(tmp, "uharmony-pki", "site-key", "--dir", "rogue", "--site", "intruder")  # never registered
        port = _free_port()
        spawn(
            "superlink",
            "uharmony-coordinator",
            "start",
            "--pki",
            "pki",
            "--state",
            "state",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        for _ in range(30):  # wait until the SuperLink accepts registrations
            res = _cmd(tmp, "uharmony-coordinator", "register", "--pki", "pki", "--state", "state", check=False)
            if res.returncode == 0:
                break
            time.sleep(1)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.count("registered") == 4  # s4's key is admitted by the consortium up front

        folders = _site_folders(tmp)
        for i, folder in enumerate(folders):
            name = folder.name
            cfg = _site_config(tmp, name, i, folder, tmp / "pki" / "sites" / name / "auth.key", port)
            spawn(name, "uharmony-site", "start", "--config", str(cfg))

        joiner = _joining_site(tmp)
        t0 = time.time()
        run = subprocess.Popen(
            [
                str(BIN / "uharmony-coordinator"),
                "run",
                "--state",
                "state",
                "--app",
                str(REPO),
                "-c",
                "num-server-rounds=3 local-steps=2 patch-size=16 filters='8,16,32' spacing=6.0 batch-size=1 "
                f"num-domains=3 min-sites=3 run-dir='{tmp / 'run'}'",
            ],
            env=_env(tmp),
            cwd=tmp,
            stdout=open(tmp / "coordinator-run.log", "w"),  # noqa: SIM115 - written until the run ends
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(run)
        metrics = tmp / "run" / "metrics.jsonl"
        while '"event": "train"' not in (metrics.read_text() if metrics.exists() else ""):  # round 1 trained
            assert run.poll() is None and time.time() - t0 < 600, "round 1 did not finish"
            time.sleep(2)
        cfg4 = _site_config(tmp, "s4", 3, joiner, tmp / "pki" / "sites" / "s4" / "auth.key", port)
        spawn("s4", "uharmony-site", "start", "--config", str(cfg4))  # a hospital joins the running federation
        run.wait(timeout=900)
        out = (tmp / "coordinator-run.log").read_text()
        elapsed = time.time() - t0
        assert run.returncode == 0, out + (tmp / "superlink.log").read_text()[-3000:]
        status = json.loads(out.strip().splitlines()[-1])
        assert status["status"] == "finished:completed"
        recs = [json.loads(x) for x in metrics.read_text().splitlines()]
        trains = {r["round"]: r for r in recs if r.get("event") == "train"}
        assert sorted(trains) == [1, 2, 3] and not any(r["rejected"] for r in trains.values())
        assert sorted(trains[1]["sites"]) == ["s1", "s2", "s3"]
        join = [r for r in recs if r.get("event") == "join" and r["site"] == "s4"]
        assert len(join) == 1 and join[0]["round"] in (2, 3), join
        assert join[0]["added"] == {"modalities": ["adc"], "regions": ["RC"], "domains": [3]}
        assert all("s4" in trains[r]["sites"] for r in range(join[0]["round"], 4))
        after = {(r["site"], r["mode"], r["region"]): r["dice"] for r in recs if r.get("phase") == "after-extension"}
        before = {
            (r["site"], r["mode"], r["region"]): r["dice"]
            for r in recs
            if r.get("round") == join[0]["round"] - 1 and "dice" in r and "phase" not in r
        }
        assert before and all(abs(after[k] - v) <= 1e-6 for k, v in before.items())  # old sites unchanged
        assert {r["region"] for r in recs if r.get("site") == "s4" and "dice" in r} == {"ET", "TC", "WT", "RC"}
        print(f"TLS deployment: 3 rounds with a join in {elapsed:.1f} s (Flower elapsed {status['elapsed']:.1f} s)")

        # a SuperNode whose key was never registered is refused
        bad = _site_config(tmp, "intruder", 0, folders[0], tmp / "rogue" / "sites" / "intruder" / "auth.key", port)
        # (the daemons' children keep pipes open, so their output goes to log files)
        intruder = spawn("intruder", "uharmony-site", "start", "--config", str(bad))
        assert intruder.wait(timeout=180) != 0
        assert "failed to activate supernode" in (tmp / "intruder.log").read_text().lower()

        # a plaintext connection to the TLS SuperLink fails
        plain = spawn(
            "plaintext",
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(_free_port()),
            "--max-retries",
            "2",
            "--max-wait-time",
            "15",
        )
        assert plain.wait(timeout=180) != 0
        assert "failed to initialize the connection" in (tmp / "plaintext.log").read_text().lower()
    finally:
        for p in procs:  # stop every process this test started (and their children), by process id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

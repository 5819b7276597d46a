"""A real deployment on 127.0.0.1: the coordinator's SuperLink behind its gateway, hospitals' SuperNodes.

The coordinator makes the PKI (CA key encrypted), starts the SuperLink on the loopback interface with the
gateway (nginx) in front, registers the keys the hospitals made themselves for named sites and domains,
and publishes a signed app. Three hospitals start together; a fourth, post-operative one (ADC contrast,
resection-cavity labels, a new domain) starts its SuperNode after round 1 and joins the running
federation. Then what must fail, fails: a registration or a run listing from outside, an unsigned app,
an unregistered key, a key registered behind the registry's back, a plaintext connection.
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
from uharmony.signing import load_public_keys, verify_manifest

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


def _site_config(tmp, name, domain, data, key, gateway_port, file=None) -> Path:
    path = tmp / f"{file or name}.toml"
    path.write_text(
        f'[site]\nsite-id = "{name}"\ndomain-id = {domain}\ndata = "{data}"\n'
        f'state-dir = "{tmp / ("state-" + name)}"\nsuperlink = "127.0.0.1:{gateway_port}"\n'
        f'ca = "{tmp / "pki" / "ca.crt"}"\ntrusted-entities = "{tmp / "pki" / "trusted-entities.yaml"}"\n'
        f'key = "{key}"\nport = {_free_port()}\nmax-retries = 2\nmax-wait-time = 20\n'
    )
    return path


def _outsider(tmp, gateway_port) -> dict:
    """The environment of someone who has the public ca.crt and reaches the coordinator's public port."""
    home = tmp / "outsider-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "pub"\n\n[superlink.pub]\naddress = '
        f'"127.0.0.1:{gateway_port}"\nroot-certificates = "{tmp / "pki" / "ca.crt"}"\n'
    )
    return {**_env(tmp), "FLWR_HOME": str(home)}


def test_tls_federation_closed_control_plane_signed_apps_registered_sites(tmp_path):
    tmp = tmp_path
    procs: list[subprocess.Popen] = []

    def spawn(name, *args, env=None):
        log = open(tmp / f"{name}.log", "w")  # noqa: SIM115 - the daemon writes to it until the test ends
        p = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=env or _env(tmp),
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        (tmp / "ca-pass").write_text("a long consortium passphrase\n")
        _cmd(tmp, "uharmony-pki", "init-ca", "--dir", "pki", "--passphrase-file", "ca-pass")
        _cmd(
            tmp,
            "uharmony-pki",
            "server-cert",
            "--dir",
            "pki",
            "--dns",
            "superlink.example.org",
            "--passphrase-file",
            "ca-pass",
        )  # localhost / 127.0.0.1 are always in it
        for name in ("s1", "s2", "s3", "s4", "mallory", "intruder"):  # each hospital makes its own key
            _cmd(tmp, "uharmony-site", "keygen", "--dir", f"keys/{name}", "--site-id", name)
        port, link, registry = _free_port(), _free_port(), _free_port()
        spawn(
            "coordinator",
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
            "--superlink-port",
            str(link),
            "--registry-port",
            str(registry),
        )
        for i, name in enumerate(("s1", "s2", "s3", "s4")):
            for _ in range(40):  # until the SuperLink accepts registrations
                res = _cmd(
                    tmp,
                    "uharmony-coordinator",
                    "register",
                    "--state",
                    "state",
                    "--site",
                    name,
                    "--domain",
                    str(i),
                    "--public-key",
                    f"keys/{name}/auth.pub",
                    check=False,
                )
                if res.returncode == 0:
                    break
                time.sleep(1)
            assert res.returncode == 0 and "registered" in res.stdout, res.stdout + res.stderr
        # an insider registers a key with the SuperLink directly, bypassing the coordinator's registry
        home = tmp / "state" / "flwr"
        res = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", "keys/mallory/auth.pub", "consortium", "--name", "s5"],
            env={**_env(tmp), "FLWR_HOME": str(home)},
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        published = _cmd(
            tmp, "uharmony-coordinator", "publish", "--pki", "pki", "--state", "state", "--app", str(REPO), timeout=300
        )
        assert "signed by fpk_" in published.stdout

        folders = _site_folders(tmp)
        for i, folder in enumerate(folders):
            cfg = _site_config(tmp, folder.name, i, folder, tmp / "keys" / folder.name / "auth.key", port)
            spawn(folder.name, "uharmony-site", "start", "--config", str(cfg))
        # claims to be s1, with a key the registry does not know
        mallory = _site_config(tmp, "s1", 0, folders[0], tmp / "keys" / "mallory" / "auth.key", port, file="mallory")
        spawn("mallory", "uharmony-site", "start", "--config", str(mallory))

        joiner = _joining_site(tmp)
        t0 = time.time()
        run_cfg = (
            "num-server-rounds=3 eval-every=1 local-steps=2 patch-size=16 filters='8,16,32' spacing=6.0 batch-size=1 "
            f"num-domains=3 min-sites=3 profile-timeout=60.0 run-dir='{tmp / 'run'}'"
        )
        run = spawn("coordinator-run", "uharmony-coordinator", "run", "--pki", "pki", "--state", "state", "-c", run_cfg)
        metrics = tmp / "run" / "metrics.jsonl"
        while '"event": "train"' not in (metrics.read_text() if metrics.exists() else ""):  # round 1 trained
            assert run.poll() is None and time.time() - t0 < 600, (tmp / "coordinator-run.log").read_text()[-3000:]
            time.sleep(2)
        cfg4 = _site_config(tmp, "s4", 3, joiner, tmp / "keys" / "s4" / "auth.key", port)
        spawn("s4", "uharmony-site", "start", "--config", str(cfg4))  # a hospital joins the running federation
        run.wait(timeout=900)
        out = (tmp / "coordinator-run.log").read_text()
        elapsed = time.time() - t0
        assert run.returncode == 0, out + (tmp / "state" / "superlink.log").read_text()[-3000:]
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
        after = {
            (r["site"], r["mode"], r["region"]): r["dice"]
            for r in recs
            if r.get("phase") == "after-extension" and "dice" in r
        }
        before = {
            (r["site"], r["mode"], r["region"]): r["dice"]
            for r in recs
            if r.get("round") == join[0]["round"] - 1 and "dice" in r and "phase" not in r
        }
        assert before and all(abs(after[k] - v) <= 1e-6 for k, v in before.items())  # old sites unchanged
        assert {r["region"] for r in recs if r.get("site") == "s4" and "dice" in r} == {"ET", "TC", "WT", "RC"}
        refused = [r for r in recs if r.get("event") == "join-refused"]
        assert refused and all("not registered for any site" in r["reason"] for r in refused)  # mallory
        # the released model is signed by the coordinator; a hospital checks it with its trusted-entities file
        verify_manifest(tmp / "run", load_public_keys(tmp / "pki" / "trusted-entities.yaml"))
        print(f"TLS deployment: 3 rounds with a join in {elapsed:.1f} s (Flower elapsed {status['elapsed']:.1f} s)")

        # the control plane is closed to outsiders: the gateway forwards the Fleet API only
        for args in (["supernode", "register", "keys/intruder/auth.pub", "pub"], ["ls", "pub"]):
            res = subprocess.run(
                [str(BIN / "flwr"), *args],
                env=_outsider(tmp, port),
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert res.returncode != 0 and "403" in res.stdout + res.stderr, res.stdout + res.stderr
        assert 'POST /v1/control/register-node HTTP/1.1" 403' in (tmp / "state" / "gateway" / "access.log").read_text()

        # an app the coordinator did not sign is refused by every SuperNode (here: submitted from a plain folder)
        res = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(REPO),
                "consortium",
                "--format",
                "json",
                "-c",
                run_cfg.replace("run'", "unsigned-run'"),
            ],
            env={**_env(tmp), "FLWR_HOME": str(home)},
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        unsigned = json.loads(res.stdout)["run-id"]
        for _ in range(120):
            ls = subprocess.run(
                [str(BIN / "flwr"), "ls", "consortium", "--run-id", str(unsigned), "--format", "json"],
                env={**_env(tmp), "FLWR_HOME": str(home)},
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            run_status = json.loads(ls.stdout)["runs"][0]["status"]
            if run_status.startswith("finished"):
                break
            time.sleep(2)
        assert run_status != "finished:completed"
        assert "verif" in (tmp / "s1.log").read_text().lower()  # the SuperNode's own FAB verification refused it

        # a SuperNode whose key was never registered is refused
        bad = _site_config(tmp, "intruder", 0, folders[0], tmp / "keys" / "intruder" / "auth.key", port)
        intruder = spawn("intruder", "uharmony-site", "start", "--config", str(bad))
        assert intruder.wait(timeout=180) != 0
        assert "failed to activate supernode" in (tmp / "intruder.log").read_text().lower()

        # a plaintext connection to the gateway fails
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

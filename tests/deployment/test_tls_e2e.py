"""A real deployment on 127.0.0.1: the coordinator's SuperLink behind its gateway, hospitals' SuperNodes.

The coordinator makes the PKI (CA key encrypted), starts the SuperLink on the loopback interface with the
gateway (nginx) in front, registers the keys the hospitals made themselves for named sites and domains,
and publishes a signed app. Three hospitals start together; a fourth, post-operative one (ADC contrast,
resection-cavity labels, a new domain) starts its SuperNode after round 1 and joins the running
federation. A fifth hospital has scans but no annotations (``"labels": "none"``): it is admitted, trains nothing
and is not scored in the segmentation run (it only recalibrates its statistics), then trains in a UMS-Rep
phase-P run with the others. Then what must fail, fails: a registration or a run listing from outside, an app that
was not published (signed), an unregistered key, a key registered behind the registry's back, a plaintext connection.
"""

import json
import time
from pathlib import Path

import pytest

from simulation.deployment import TINY_RUN, LocalConsortium, final_status, free_port, records, wait_for
from simulation.synth import generate_federation
from simulation.synth.profiles import make_join_profile
from uharmony.records.signing import SignatureError, load_public_keys, verify_manifest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]  # one worker, in turn
REPO = Path(__file__).resolve().parents[2]


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


def _label_free_site(tmp) -> Path:
    """Site s5: scans only (no label file anywhere), declared with ``"labels": "none"``."""
    generate_federation(tmp / "fed5", 1, 3, seed=0, spacing=6.0, first_site=4, progress=False)
    site = tmp / "data" / "s5"
    for case in (tmp / "fed5").glob("SYN_*"):
        (site / case.name).mkdir(parents=True)
        for image in case.glob("*.nii.gz"):
            if not image.name.endswith("_seg.nii.gz"):
                (site / case.name / image.name).symlink_to(image)
    (site / "site.json").write_text(json.dumps({"labels": "none"}))
    return site


def _outsider(c: LocalConsortium) -> dict:
    """The environment of someone who has the public ca.crt and reaches the coordinator's public port."""
    home = c.root / "outsider-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "pub"\n\n[superlink.pub]\naddress = '
        f'"127.0.0.1:{c.port}"\nroot-certificates = "{c.root / "pki" / "ca.crt"}"\n'
    )
    return c.env(FLWR_HOME=str(home))


def test_tls_federation_closed_control_plane_signed_apps_registered_sites(tmp_path):
    tmp = tmp_path
    with LocalConsortium(tmp) as c:
        c.init_pki()  # the CA key encrypted; localhost / 127.0.0.1 are always in the server certificate
        for name in ("s1", "s2", "s3", "s4", "s5", "mallory", "intruder"):  # each hospital makes its own key
            c.keygen(name)
        c.start_coordinator()
        for i, name in enumerate(("s1", "s2", "s3", "s4")):
            c.register(name, i)
        c.register("s5", 0)  # label-free, on the scanners of s1's domain
        # an insider registers a key with the SuperLink directly, bypassing the coordinator's registry
        home = tmp / "state" / "flwr"
        c.cmd("flwr", "supernode", "register", "keys/mallory/auth.pub", "consortium", "--name", "s5",
              env=c.env(FLWR_HOME=str(home)))  # fmt: skip
        assert "signed by fpk_" in c.publish()

        folders = c.site_folders(3, 3)
        for i, folder in enumerate(folders):
            c.start_site(folder.name, c.site_config(folder.name, i, folder, tmp / "keys" / folder.name / "auth.key"))
        c.start_site("s5", c.site_config("s5", 0, _label_free_site(tmp), tmp / "keys" / "s5" / "auth.key"))
        # claims to be s1, with a key the registry does not know
        c.start_site("mallory", c.site_config("s1", 0, folders[0], tmp / "keys" / "mallory" / "auth.key", "mallory"))

        # as at a hospital, the SuperNodes are up before the run (min-sites counts s5, which has no labels)
        c.wait_online(("s1", "s2", "s3", "s5"))
        joiner = _joining_site(tmp)
        t0 = time.time()
        run_cfg = (
            f"num-server-rounds=3 eval-every=1 {TINY_RUN} num-domains=3 min-sites=3 profile-timeout=60.0 "
            f"run-dir='{tmp / 'run'}'"
        )
        run = c.submit(run_cfg)
        wait_for(lambda: _trained(tmp / "run", 1), 600, "round 1", run)
        c.start_site("s4", c.site_config("s4", 3, joiner, tmp / "keys" / "s4" / "auth.key"))  # joins the running run
        status = final_status(c, run)
        elapsed = time.time() - t0
        assert status["status"] == "finished:completed", status
        recs = records(tmp / "run")
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
        # the released model is signed with the coordinator's model-signing key, which hospitals check with
        # model-signing.pub; that key is not an app-signing key (not in trusted-entities.yaml)
        verify_manifest(tmp / "run", load_public_keys(tmp / "pki" / "model-signing.pub"))
        with pytest.raises(SignatureError):
            verify_manifest(tmp / "run", load_public_keys(tmp / "pki" / "trusted-entities.yaml"))
        assert " train: " in c.log("s1")  # the site worker answered the train messages
        progress = c.log("coordinator-run")  # issue 31: `run` printed each round while it ran
        assert all(f"round {r}: trained s" in progress for r in (1, 2, 3)) and "round 3 Dice: s1 " in progress
        print(f"TLS deployment: 3 rounds with a join in {elapsed:.1f} s (Flower elapsed {status['elapsed']:.1f} s)")
        # the label-free hospital: admitted without regions, never trained or scored, its statistics kept current
        free = [r for r in recs if r.get("event") == "join" and r["site"] == "s5"]
        assert len(free) == 1 and free[0]["regions"] == [] and free[0]["added"]["domains"] == []
        assert not any("s5" in r["sites"] for r in trains.values())
        assert not any(r.get("site") == "s5" for r in recs if "dice" in r)
        assert any(r.get("event") == "calibrated" and r["sites"] >= 1 for r in recs)

        # UMS-Rep phase P: every hospital denoises its own scans, the label-free one included
        pretrain = c.submit(
            f"phase='pretrain' num-server-rounds=1 noise-levels='0.2' {TINY_RUN} num-domains=3 min-sites=5 "
            "profile-timeout=60.0 "
            f"run-dir='{tmp / 'pretrain'}'",
            name="pretrain-run",
        )
        status = final_status(c, pretrain, name="pretrain-run")
        assert status["status"] == "finished:completed", status
        recs = records(tmp / "pretrain")
        trained = next(r for r in recs if r.get("event") == "train")
        assert sorted(trained["sites"]) == ["s1", "s2", "s3", "s4", "s5"] and not trained["rejected"]
        assert {r["site"] for r in recs if r.get("event") == "denoise"} == {"s1", "s2", "s3", "s4", "s5"}
        assert (tmp / "pretrain" / "umsrep.pt").is_file() and (tmp / "pretrain" / "umsrep.json").is_file()

        # the control plane is closed to outsiders: the gateway forwards the Fleet API only
        for args in (["supernode", "register", "keys/intruder/auth.pub", "pub"], ["ls", "pub"]):
            res = c.cmd("flwr", *args, env=_outsider(c), check=False)
            assert res.returncode != 0 and "403" in res.stdout + res.stderr, res.stdout + res.stderr
        assert 'POST /v1/control/register-node HTTP/1.1" 403' in (tmp / "state" / "gateway" / "access.log").read_text()

        # an app the coordinator did not publish (signed) is refused by the SuperLink itself, even from the
        # coordinator's own account: its ServerApp never runs here, and no SuperNode is asked to run it
        insider = c.env(FLWR_HOME=str(home))
        unsigned_cfg = run_cfg.replace("run'", "unsigned-run'")
        res = c.cmd("flwr", "run", REPO, "consortium", "--format", "json", "-c", unsigned_cfg, env=insider, timeout=300)
        assert '"success": false' in res.stdout and "only apps the coordinator published" in res.stdout, res.stdout
        assert not (tmp / "unsigned-run").exists()

        # a SuperNode whose key was never registered is refused, and a plaintext connection fails (side by side)
        bad = c.site_config("intruder", 0, folders[0], tmp / "keys" / "intruder" / "auth.key")
        intruder = c.start_site("intruder", bad)
        plain = c.spawn("plaintext", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{c.port}",
                        "--port", free_port(), "--max-retries", "2", "--max-wait-time", "15")  # fmt: skip
        assert intruder.wait(timeout=180) != 0
        assert "failed to activate supernode" in c.log("intruder").lower()
        assert plain.wait(timeout=180) != 0
        assert "failed to initialize the connection" in c.log("plaintext").lower()


def _trained(run_dir, rnd):
    return next((r for r in records(run_dir) if r.get("event") == "train" and r["round"] == rnd), None)

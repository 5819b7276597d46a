"""Issue 31, item 5: ``uharmony-coordinator status`` lists the registered sites, online or not (Flower's node
list matched to the registry by key), and the SuperLink's runs with the last round in each run's folder."""

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.serde import run_from_proto
from flwr.common.serde import user_config_to_proto as config_proto
from flwr.proto.node_pb2 import NodeInfo
from flwr.proto.run_pb2 import Run, RunStatus

from server.operator import consortium_status
from server.registry import SiteRegistry
from uharmony.records.runlog import RunLog


def _key():
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    ssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ssh, pem


def test_status_lists_sites_online_offline_and_runs_with_their_last_round(tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    registry = SiteRegistry(state / "registry.json")
    keys = {name: _key() for name in ("hospital-a", "hospital-b", "hospital-c", "hospital-d", "mallory")}
    for i, name in enumerate(("hospital-a", "hospital-b", "hospital-c", "hospital-d")):
        registry.add(name, i, keys[name][0])
    registry.revoke("hospital-d")
    nodes = [  # as the SuperLink's Control API answers ListNodes
        NodeInfo(node_id=11, name="hospital-a", status="online", public_key=keys["hospital-a"][1]),
        NodeInfo(
            node_id=12,
            name="hospital-b",
            status="offline",
            public_key=keys["hospital-b"][1],
            last_deactivated_at="2026-12-06T10:00:00",
        ),  # fmt: skip
        NodeInfo(node_id=13, name="hospital-a", status="online", public_key=keys["mallory"][1]),  # not its key
    ]
    run_dir = state / "runs" / "r1"
    log = RunLog(run_dir, "r1")
    for rnd in (1, 2, 3):
        log.write({"round": rnd, "event": "train", "sites": ["hospital-a"], "rejected": []})
    RunLog(run_dir, "older").write({"round": 9, "event": "train", "sites": [], "rejected": []})
    config = {"run-dir": str(run_dir), "run-id": "r1", "num-server-rounds": 20}
    runs = [
        run_from_proto(
            Run(
                run_id=77,
                pending_at="2026-12-06 10:00:00",
                status=RunStatus(status="running"),
                override_config=config_proto(config),
            )  # fmt: skip
        ),
        run_from_proto(
            Run(
                run_id=76,
                pending_at="2026-12-05 09:00:00",
                override_config=config_proto({}),
                status=RunStatus(status="finished", sub_status="failed", details="ServerApp error"),
            )  # fmt: skip
        ),
    ]
    monkeypatch.setattr(consortium_status, "list_nodes", lambda s: nodes)
    monkeypatch.setattr(consortium_status, "list_runs", lambda s: list(reversed(runs)))
    doc = consortium_status.status(state)
    assert {s["site"]: s["status"] for s in doc["sites"]} == {
        "hospital-a": "online",
        "hospital-b": "offline",
        "hospital-c": "not on the SuperLink",
        "hospital-d": "revoked",
    }
    assert doc["sites"][0]["node"] == 11 and doc["sites"][1]["since"] == "2026-12-06T10:00:00"
    assert doc["unknown-nodes"] == [{"node": 13, "name": "hospital-a", "status": "online"}]
    assert [r["flower-run-id"] for r in doc["runs"]] == ["77", "76"]  # newest first
    assert doc["runs"][0] == {
        "flower-run-id": "77", "status": "running", "submitted": "2026-12-06 10:00:00", "rounds": 20,
        "run-id": "r1", "run-dir": str(run_dir), "last-round": 3,
    }  # fmt: skip
    assert doc["runs"][1]["status"] == "finished:failed" and doc["runs"][1]["details"] == "ServerApp error"

    from server.operator.coordinator import main

    assert main(["status", "--state", str(state)]) == 0
    table = capsys.readouterr().out
    assert "hospital-a" in table and "online" in table and "round 3/20" in table and "its key is not in" in table
    assert main(["status", "--state", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(doc))


def test_status_without_a_superlink_says_so(tmp_path, capsys):
    from server.operator.coordinator import write_connection

    (tmp_path / "ca.crt").write_text("")
    write_connection(tmp_path / "state", 1, tmp_path / "ca.crt")  # nothing listens on port 1
    from server.operator.coordinator import main

    assert main(["status", "--state", str(tmp_path / "state")]) == 2
    assert "does not answer" in capsys.readouterr().err

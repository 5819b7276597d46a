"""Issue 31, item 5, against Flower's real SuperLink (the coordinator's guarded one, TLS, on 127.0.0.1):
``uharmony-coordinator status`` reads the registered sites and the runs through Flower's Control API."""

import json
import os
import subprocess

import pytest

from client.keys import generate_node_key
from server.operator.control_api import flwr_env
from server.operator.coordinator import main as coordinator
from server.operator.coordinator import superlink_command, write_connection
from server.operator.pki import init_ca, server_cert
from simulation.deployment import BIN, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower-runtimes")]


def test_status_on_a_real_superlink_shows_a_registered_site_never_connected_then_online(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")  # flwr, flower-superexec, flower-supernode
    pki, state = tmp_path / "pki", tmp_path / "state"
    init_ca(pki, days=30, passphrase=b"correct horse")
    server_cert(pki, ["superlink.example.org"], [], days=10, passphrase=b"correct horse")
    port = free_port()
    state.mkdir(mode=0o700)
    write_connection(state, port, pki / "ca.crt")
    link = subprocess.Popen(superlink_command(pki, state, port), env=flwr_env(state), start_new_session=True)
    try:
        wait_for(lambda: coordinator(["status", "--state", str(state), "--json"]) == 0, 120, "the SuperLink", link, 1)
        capsys.readouterr()
        key, pub = generate_node_key(tmp_path / "keys", "hospital-a")
        assert coordinator(["register", "--state", str(state), "--site", "hospital-a", "--domain", "0",
                            "--public-key", str(pub)]) == 0  # fmt: skip
        capsys.readouterr()
        assert coordinator(["status", "--state", str(state), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["sites"] == [
            {"site": "hospital-a", "domain": 0, "status": "never connected", "node": doc["sites"][0]["node"]}
        ]
        assert doc["unknown-nodes"] == [] and doc["runs"] == []
        node = subprocess.Popen(  # the hospital's SuperNode connects (here straight to the SuperLink)
            ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(pki / "ca.crt"),
             "--auth-supernode-private-key", str(key), "--port", str(free_port()), "--max-retries", "3"],
            env=flwr_env(state), start_new_session=True,
        )  # fmt: skip
        try:

            def online():
                capsys.readouterr()
                coordinator(["status", "--state", str(state), "--json"])
                return json.loads(capsys.readouterr().out)["sites"][0]["status"] == "online"

            wait_for(online, 120, "hospital-a online", node, 1)
        finally:
            node.terminate()
            node.wait(timeout=30)
    finally:
        link.terminate()
        link.wait(timeout=30)

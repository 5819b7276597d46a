"""The coordinator's way to its own SuperLink: Flower's CLI (``flwr``) and Flower's Control API client, with
``FLWR_HOME=<state>/flwr`` (the connection ``uharmony-coordinator start`` writes)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

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


def exe(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} not found on PATH (activate the project's .venv)")
    return path


def flwr(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe("flwr"), *args], env=flwr_env(state), capture_output=True, text=True)


def last_error(res: subprocess.CompletedProcess) -> str:
    lines = [line.strip("│╭╰─ ").strip() for line in (res.stdout + res.stderr).splitlines()]
    lines = [x for x in lines if x and not set(x) <= set("─│╭╮╰╯ ")]
    return lines[-1] if lines else f"exit {res.returncode}"


@contextlib.contextmanager
def control_client(state: Path):
    """Flower's own Control API client for the SuperLink of ``state`` (what ``flwr ls`` and ``flwr supernode
    list`` use; the protobuf answers carry what their tables leave out, such as a node's name)."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection

    before = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = flwr_env(state)["FLWR_HOME"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Flower prints "Using SuperLink: ..." (not in --json)
            client = init_http_client_from_connection(read_superlink_connection(CONNECTION))
        try:
            yield client
        finally:
            client.close()
    finally:
        if before is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = before


def list_nodes(state: Path) -> list:
    """The SuperLink's nodes (``NodeInfo``: id, name, status online / offline / registered / unregistered)."""
    from flwr.proto.control_pb2 import ListNodesRequest

    with control_client(state) as client:
        return list(client.ListNodes(ListNodesRequest()).nodes_info)


def list_runs(state: Path) -> list:
    """The SuperLink's runs as Flower's ``Run`` (id, status, the run config the run was submitted with)."""
    from flwr.common.serde import run_from_proto
    from flwr.proto.control_pb2 import ListRunsRequest

    with control_client(state) as client:
        res = client.ListRuns(ListRunsRequest())
    return [run_from_proto(proto) for proto in res.run_dict.values()]

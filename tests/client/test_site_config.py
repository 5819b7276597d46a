"""Issue 31, item 7 and security F14: ``site.toml`` is read and checked in one place (``client/site_config.py``):
every error names the file and the key, the SuperNode's port never clashes unless the site sets a taken one,
and the site's own ``min-report-cases`` reaches the SuperNode's node config, where the ClientApp reads it."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from client.site_cli import site_env, supernode_command
from client.site_config import KEYS, load_site_config
from uharmony.federation.config import RunConfig
from uharmony.federation.site_round import report_floor


def _site(tmp_path, extra: str = "") -> Path:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    for name in ("ca.crt", "trusted-entities.yaml", "auth.key"):
        (etc / name).write_text("x")
    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nsite-id = "hospital-a"\ndomain-id = 1\ndata = "data"\nsuperlink = "127.0.0.1:9092"\n'
        'ca = "etc/ca.crt"\ntrusted-entities = "etc/trusted-entities.yaml"\nkey = "etc/auth.key"\n' + extra
    )
    return path


@pytest.mark.parametrize(
    "extra, key, why",
    [
        ("prot = 9100\n", "prot", "unknown key"),
        ('port = "9100"\n', "port", "must be an integer"),
        ("port = 70000\n", "port", "must be in [1, 65535]"),
        ("domain-id = 1\n", None, "cannot read"),  # a key twice: TOML's error
        ("worker = 1\n", "worker", "must be true or false"),
        ("min-report-cases = 0\n", "min-report-cases", "must be >= 1"),
        ("min-report-cases = 2.5\n", "min-report-cases", "must be an integer"),
        ("rejoin-seconds = -1\n", "rejoin-seconds", "must be >= 0"),
    ],
)
def test_every_error_names_the_file_and_the_key(tmp_path, extra, key, why):
    path = _site(tmp_path, extra)
    with pytest.raises(ValueError, match="site config|\\[site\\]") as err:
        load_site_config(path)
    assert str(path) in str(err.value) and why in str(err.value) and (key is None or key in str(err.value))


def test_a_missing_file_names_its_key_and_relative_paths_are_the_files_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not the folder of site.toml
    cfg = load_site_config(_site(tmp_path))
    assert cfg["data"] == str(tmp_path / "data") and cfg["ca"] == str(tmp_path / "etc" / "ca.crt")
    (tmp_path / "etc" / "auth.key").unlink()
    with pytest.raises(ValueError, match=r"site.toml: \[site\] key = .*auth.key' is not a file"):
        load_site_config(tmp_path / "site.toml")


def test_a_port_in_use_is_refused_naming_the_key_and_an_unset_port_is_a_free_one(tmp_path, monkeypatch):
    with socket.socket() as taken:  # e.g. the coordinator's app registry, or another site's SuperNode
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"site.toml: \[site\] port = {port}: 127.0.0.1:{port} is already in use"):
            load_site_config(_site(tmp_path, f"port = {port}\n"))
        monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{Path.cwd()}")  # flower-supernode
        cmd = supernode_command(load_site_config(_site(tmp_path)))
        chosen = int(cmd[cmd.index("--port") + 1])
        assert chosen != port and chosen != 9094  # not Flower's fixed default either
        with socket.socket() as s:
            s.bind(("127.0.0.1", chosen))  # free


def test_the_sites_own_min_report_cases_reaches_the_node_config_the_client_reads(tmp_path, monkeypatch):
    """Security F14 (leftover): ``uharmony-site start`` passed data-path, site-id, domain-id and state-dir but
    not the site's own privacy floor, so a site.toml's ``min-report-cases`` never reached the ClientApp."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}")

    def node_config(extra=""):
        cmd = supernode_command(load_site_config(_site(tmp_path, extra)))
        return parse_config_args([cmd[cmd.index("--node-config") + 1]])  # as flower-supernode parses it

    floored = node_config("min-report-cases = 5\n")
    assert floored["min-report-cases"] == 5 and floored["site-id"] == "hospital-a" and floored["domain-id"] == 1
    assert report_floor(floored, RunConfig(min_report_cases=1)) == 5  # the run cannot lower it
    assert report_floor(floored, RunConfig(min_report_cases=8)) == 8
    assert "min-report-cases" not in node_config() and report_floor(node_config(), RunConfig()) == 1


def test_the_reference_lists_every_key_the_daemon_reads():
    """Every key the site's code reads from the config is in ``KEYS`` (the source of docs/site-toml.md)."""
    import re

    import client.site_cli

    read = set(re.findall(r"cfg(?:\.get\(|\[)\"([a-z-]+)\"", Path(client.site_cli.__file__).read_text()))
    assert read and read <= {k.name for k in KEYS}


def test_idle_poll_reaches_the_supernode_and_is_checked(tmp_path, monkeypatch):
    """Issue 33 item 4: the SuperNode's idle poll (Flower: 3 s) is the site's ``idle-poll``, default 0.5 s."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}")

    def idle(extra=""):
        cmd = supernode_command(load_site_config(_site(tmp_path, extra)))
        assert cmd.index("--idle-poll") < cmd.index("--")  # the wrapper's option, not Flower's
        return float(cmd[cmd.index("--idle-poll") + 1])

    assert idle() == 0.5 and idle("idle-poll = 3\n") == 3.0 and idle("idle-poll = 0.2\n") == 0.2
    for bad in ("idle-poll = 0\n", "idle-poll = 10\n", 'idle-poll = "fast"\n', "idle-poll = nan\n",
                "rejoin-seconds = inf\n"):  # fmt: skip
        with pytest.raises(ValueError, match=bad.split(" =")[0]):
            load_site_config(_site(tmp_path, bad))


def test_threads_reach_torch_in_the_sites_processes(tmp_path, monkeypatch):
    """Sites sharing a machine: ``threads`` is each site's torch threads (3 sites at all cores of a 2-core
    machine made each message 3-5x slower, docs/operations.md)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert "OMP_NUM_THREADS" not in site_env(load_site_config(_site(tmp_path)))  # torch's default: all cores
    env = site_env(load_site_config(_site(tmp_path, "threads = 1\n")))
    assert env["OMP_NUM_THREADS"] == "1"
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "1"
    with pytest.raises(ValueError, match="threads"):
        load_site_config(_site(tmp_path, "threads = 0\n"))

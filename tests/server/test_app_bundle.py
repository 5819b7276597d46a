"""The app bundle the coordinator signs holds code and config only (new-user trial 2026-12-06, problem 8: the
bundle built from the working tree carried ``registry.json``, ``data/synth/federation.json`` and PKI files)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.operator import app_bundle, app_registry
from server.operator.pki import init_ca

REPO = Path(__file__).resolve().parents[2]
FLWR = str(Path(sys.executable).with_name("flwr"))
PACKAGES = ("uharmony", "client", "server")
# what a coordinator's working tree may hold beside the code (the trial's, and the rest of the tree)
PLANTED = (
    "registry.json",
    "coord/link/registry.json",
    "coord/link/flwr/config.toml",
    "data/synth/federation.json",
    "data/synth/SYN_a_000/SYN_a_000_t1.nii.gz",
    "pki/trusted-entities.yaml",
    "pki/app-signing.key",
    "pki/ca.key",
    "ca-pass",
    "sites/hospital-a/site.toml",
    "runs/latest/config.json",
    "runs/latest/metrics.jsonl",
    ".venv/lib/python3.11/site-packages/evil.py",
    ".flwr-other/config.toml",
    "docs/operations.md",
    "tests/test_something.py",
    "notes.yaml",
    "server/registry.json",  # inside a package folder: only its Python files go in
    "uharmony/data/federation.json",
)


@pytest.fixture
def clone(tmp_path):
    """A copy of the app (pyproject.toml and its packages) with a coordinator's files planted around the code."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy2(REPO / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in PLANTED:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text('{"site": "hospital-a", "key": "ssh-ed25519 AAAA"}\n')
    return root


def code_and_config_only(names: list[str]) -> list[str]:
    """The names that are not pyproject.toml, Flower's manifest or a Python file of the app's packages."""
    allowed = {"pyproject.toml", ".info/CONTENT"}
    return [n for n in names if n not in allowed and not (n.split("/")[0] in PACKAGES and n.endswith(".py"))]


def test_the_published_app_holds_code_and_config_only(clone, tmp_path):
    init_ca(tmp_path / "pki", days=30, passphrase=b"correct horse")
    record = app_registry.publish(clone, tmp_path / "pki", tmp_path / "state", b"correct horse", FLWR)
    names = app_bundle.contents((tmp_path / "state" / "apps" / f"{record['sha256']}.fab").read_bytes())
    assert code_and_config_only(names) == []
    assert not set(PLANTED) & set(names)
    assert {"server/server_app.py", "client/client_app.py", "uharmony/federation/config.py"} <= set(
        names
    )  # the components
    assert not any("/test_" in n or n.startswith(("tests/", "docs/", "simulation/")) for n in names)


def test_flwr_build_of_the_folder_honours_the_include_list_too(clone, tmp_path):
    """What ``flwr build`` / ``flwr run .`` of the folder itself sends (the main job's bundle)."""
    out = tmp_path / "out"
    out.mkdir()
    res = subprocess.run([FLWR, "build", "--app", str(clone)], cwd=out, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    names = app_bundle.contents(next(out.glob("*.fab")).read_bytes())
    assert code_and_config_only(names) == [] and "server/server_app.py" in names


@pytest.mark.parametrize(
    ("include", "why"),
    [(None, "must list what an app bundle holds"), (["**/*.py"], "must start with a package folder")],
)
def test_an_app_without_a_folder_bound_include_list_is_not_built(tmp_path, include, why):
    text = (REPO / "pyproject.toml").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("fab-include")]
    if include is not None:
        lines.insert(lines.index("[tool.flwr.app]") + 1, f"fab-include = {include!r}".replace("'", '"'))
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    with pytest.raises(RuntimeError, match=why):
        app_bundle.stage(tmp_path, tmp_path / "staged")

"""The Flower App Bundle the coordinator signs: the apps' code and their config, nothing else.

``pyproject.toml``'s ``[tool.flwr.app] fab-include`` lists what a bundle holds (the Python files of the
packages the ServerApp and ClientApp import); ``flwr build`` and ``flwr run .`` honour it. :func:`build` goes
further for the bundle hospitals run: it copies ``pyproject.toml`` and the package folders the list names into
a fresh folder and runs ``flwr build`` there, so nothing else in the coordinator's working tree (the site
registry, data, PKI files, runs, a state folder, ``.venv``) can reach a signed bundle, whatever sits beside
the code.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import tomllib
import zipfile
from pathlib import Path

INCLUDE_KEY = "fab-include"
CONFIG = "pyproject.toml"


def include_patterns(app_dir: Path) -> list[str]:
    """``[tool.flwr.app] fab-include`` of the app's pyproject.toml; each pattern starts with a package folder."""
    doc = tomllib.loads((app_dir / CONFIG).read_text())
    patterns = doc.get("tool", {}).get("flwr", {}).get("app", {}).get(INCLUDE_KEY)
    if not patterns or not isinstance(patterns, list):
        raise RuntimeError(f"{app_dir / CONFIG}: [tool.flwr.app] {INCLUDE_KEY} must list what an app bundle holds")
    for pattern in patterns:
        top = str(pattern).lstrip("/").split("/", 1)[0]
        if "/" not in str(pattern).lstrip("/") or not top or any(c in top for c in "*?[!."):
            raise RuntimeError(
                f"{app_dir / CONFIG}: {INCLUDE_KEY} pattern {pattern!r} must start with a package folder"
            )
    return list(patterns)


def stage(app_dir: Path, dest: Path) -> Path:
    """Copy pyproject.toml and the package folders ``fab-include`` names (no caches, no links) into ``dest``."""
    app_dir = app_dir.resolve()
    folders = sorted({p.lstrip("/").split("/", 1)[0] for p in include_patterns(app_dir)})
    dest.mkdir(parents=True)
    shutil.copy2(app_dir / CONFIG, dest / CONFIG)
    for name in folders:
        if not (app_dir / name).is_dir():
            raise RuntimeError(f"{app_dir / CONFIG}: {INCLUDE_KEY} names {name}/, which {app_dir} lacks")
        shutil.copytree(
            app_dir / name, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return dest


def build(app_dir: Path, flwr: str, name: str = "uharmony-fl") -> bytes:
    """The bundle ``flwr build`` makes of a staged copy of the app (``name``: the staged folder's, which Flower
    requires to be letters, digits and hyphens); RuntimeError when the build fails."""
    with tempfile.TemporaryDirectory() as tmp:
        app = stage(app_dir, Path(tmp) / "app" / name)
        res = subprocess.run([flwr, "build", "--app", str(app)], cwd=tmp, capture_output=True, text=True)
        fabs = list(Path(tmp).glob("*.fab"))
        if res.returncode != 0 or len(fabs) != 1:
            raise RuntimeError(f"flwr build failed: {res.stdout}{res.stderr}")
        return fabs[0].read_bytes()


def contents(fab: bytes) -> list[str]:
    """The files a bundle holds (Flower's ``.info/CONTENT`` manifest included)."""
    with zipfile.ZipFile(io.BytesIO(fab)) as z:
        return sorted(z.namelist())

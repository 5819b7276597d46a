"""The site state folder: site-local parameters and harmonization statistics, kept on the site's disk.

Written atomically so a SuperNode killed mid-write never leaves a torn file; read with
``weights_only=True`` and checked against the digest written beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import atomic_write, sha256_file

STATE_FILE = "local_state.pt"
INFO_FILE = "local_state.json"


def save_local_state(folder: str | Path, state: dict[str, torch.Tensor], info: dict) -> Path:
    folder = Path(folder)
    blob = {"state": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "info": json.dumps(info)}
    path = atomic_write(folder / STATE_FILE, lambda p: torch.save(blob, p))
    atomic_write(folder / INFO_FILE, json.dumps({**info, "sha256": sha256_file(path)}, indent=2))
    return path


def load_local_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The saved local state and its info, or None if the folder has none; a damaged file is an error."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    hint = "; move it away to start the site fresh"
    try:
        expected = json.loads((Path(folder) / INFO_FILE).read_text()).get("sha256")
    except (OSError, json.JSONDecodeError):
        expected = None
    if expected is not None and sha256_file(path) != expected:
        raise ValueError(f"{path}: SHA-256 differs from {INFO_FILE}: damaged or replaced{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        info = blob["info"] if isinstance(blob["info"], dict) else json.loads(blob["info"])
        return dict(blob["state"]), info
    except Exception as exc:  # noqa: BLE001 - any unreadable content is the same answer
        raise ValueError(f"{path}: unreadable site state ({exc}){hint}") from exc


OPTIMIZER_FILE = "optimizer.pt"


def save_optimizer_state(folder: str | Path, state: dict[str, dict[str, torch.Tensor]], run_id: str = "") -> Path:
    """The site's optimizer moments by parameter name (kept at the site, like its statistics), tagged with
    the run they belong to."""
    return atomic_write(Path(folder) / OPTIMIZER_FILE, lambda p: torch.save({"run": run_id, "moments": state}, p))


def load_optimizer_state(folder: str | Path, run_id: str = "") -> dict | None:
    """The saved moments of run ``run_id``, or None (none yet, another run's, or unreadable: the site then
    starts them afresh)."""
    path = Path(folder) / OPTIMIZER_FILE
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - moments are a cache: a damaged file only costs a fresh start
        return None
    if not isinstance(blob, dict) or blob.get("run") != run_id or not isinstance(blob.get("moments"), dict):
        return None
    return blob["moments"]

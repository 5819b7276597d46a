"""The site state folder: site-local parameters, harmonization statistics and optimizer moments, kept on
the site's disk.

Written atomically so a SuperNode killed mid-write never leaves a torn file; read with
``weights_only=True`` and checked against the digest written beside it.

Two versions are kept, each tagged with the round that wrote it: the newest and the one before. A round
the server redoes after a crash (it resumes from its last checkpoint) starts from the version written
before that round, so statistics and moments are never updated twice by one round
(``before_round``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from uharmony.files import atomic_write, sha256_file

STATE_FILE = "local_state.pt"
INFO_FILE = "local_state.json"
OPTIMIZER_FILE = "optimizer.pt"
PREVIOUS = ".prev"  # local_state.prev.pt: the version before the newest


def _previous(path: Path) -> Path:
    return path.with_name(path.stem + PREVIOUS + path.suffix)


def _round(info: dict) -> float:
    """The round a version was written in; a state not written by training (calibration) counts as -inf."""
    value = info.get("round")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


def _rotate(paths: list[Path], newest_round: float | None, new_round: float) -> None:
    """Before writing round ``new_round``: keep the newest version as the previous one, unless it was written
    by this same round (a redo: the previous version stays the base)."""
    if newest_round is None or newest_round >= new_round:
        return
    for path in paths:
        if path.exists():
            os.replace(path, _previous(path))  # atomic: a crash leaves the previous version readable


def save_local_state(folder: str | Path, state: dict[str, torch.Tensor], info: dict) -> Path:
    """Save the site-local state; ``info["round"]`` (when training wrote it) versions it."""
    folder = Path(folder)
    newest = _read_info(folder / INFO_FILE)
    _rotate([folder / STATE_FILE, folder / INFO_FILE], None if newest is None else _round(newest), _round(info))
    blob = {"state": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "info": json.dumps(info)}
    path = atomic_write(folder / STATE_FILE, lambda p: torch.save(blob, p))
    atomic_write(folder / INFO_FILE, json.dumps({**info, "sha256": sha256_file(path)}, indent=2))
    return path


def _read_info(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _load_version(path: Path, info_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    hint = "; move it away to start the site fresh"
    expected = (_read_info(info_path) or {}).get("sha256")
    if expected is not None and sha256_file(path) != expected:
        raise ValueError(f"{path}: SHA-256 differs from {info_path.name}: damaged or replaced{hint}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        info = blob["info"] if isinstance(blob["info"], dict) else json.loads(blob["info"])
        return dict(blob["state"]), info
    except Exception as exc:  # noqa: BLE001 - any unreadable content is the same answer
        raise ValueError(f"{path}: unreadable site state ({exc}){hint}") from exc


def load_local_state(
    folder: str | Path, before_round: int | None = None
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest saved local state (written before round ``before_round`` when given) and its info, or None
    if the folder has none; a damaged file is an error."""
    folder = Path(folder)
    for path, info_path in ((folder / STATE_FILE, folder / INFO_FILE), (_previous(folder / STATE_FILE), None)):
        if not path.exists():
            continue
        state, info = _load_version(path, info_path or _previous(folder / INFO_FILE))
        if before_round is None or _round(info) < before_round:
            return state, info
    return None


def pick_version(versions: list[tuple[float, object]], before_round: int | None) -> object | None:
    """Of ``(round, value)`` pairs, the newest value written before ``before_round`` (any when None)."""
    fitting = [(r, v) for r, v in versions if before_round is None or r < before_round]
    return max(fitting, key=lambda rv: rv[0])[1] if fitting else None


def save_optimizer_state(
    folder: str | Path, state: dict[str, dict[str, torch.Tensor]], run_id: str = "", server_round: int = 0
) -> Path:
    """The site's optimizer moments by parameter name (kept at the site, like its statistics), tagged with
    the run and round they belong to (versioned as the local state)."""
    path = Path(folder) / OPTIMIZER_FILE
    newest = _read_optimizer(path)
    _rotate([path], None if newest is None else float(newest.get("round", 0)), float(server_round))
    blob = {"run": run_id, "round": int(server_round), "moments": state}
    return atomic_write(path, lambda p: torch.save(blob, p))


def _read_optimizer(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - moments are a cache: a damaged file only costs a fresh start
        return None
    return blob if isinstance(blob, dict) and isinstance(blob.get("moments"), dict) else None


def load_optimizer_state(folder: str | Path, run_id: str = "", before_round: int | None = None) -> dict | None:
    """The saved moments of run ``run_id`` (written before round ``before_round`` when given), or None (none
    yet, another run's, or unreadable: the site then starts them afresh)."""
    path = Path(folder) / OPTIMIZER_FILE
    for candidate in (path, _previous(path)):
        blob = _read_optimizer(candidate)
        if blob is None or blob.get("run") != run_id:
            continue
        if before_round is None or int(blob.get("round", 0)) < before_round:
            return blob["moments"]
    return None

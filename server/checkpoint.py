"""Checkpoints: model spec + global state + strategy state + round, written atomically with SHA-256.

``<run>/checkpoints/round-NNN.pt`` and ``<run>/checkpoints/manifest.json``
(``{"latest": "round-NNN.pt", "files": {name: sha256}}``). Resume refuses a file whose digest differs
from the manifest or whose model spec differs from the run's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: str | Path, server_round: int, spec: dict, state: dict[str, np.ndarray],
                    extra: dict | None = None, name: str | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"round-{server_round:03d}.pt"
    blob = {"round": server_round, "spec": spec, "state": {k: torch.from_numpy(np.array(v)) for k, v in state.items()},
            "extra": extra or {}}
    path = folder / name
    _atomic_write(path, lambda p: torch.save(blob, p))
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    manifest["files"][name] = _sha256(path)
    if name.startswith("round-"):
        manifest["latest"] = name
    _atomic_write(manifest_path, lambda p: p.write_text(json.dumps(manifest, indent=2)))
    return path


def load_checkpoint(folder: str | Path, name: str | None = None, spec: dict | None = None) -> dict:
    """Load (by default the latest) checkpoint after verifying its digest and, if given, its spec."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise CheckpointError(f"{manifest_path}: no checkpoint manifest; nothing to resume")
    manifest = json.loads(manifest_path.read_text())
    name = name or manifest.get("latest")
    if not name or name not in manifest["files"]:
        raise CheckpointError(f"{manifest_path}: no entry for checkpoint {name!r}")
    path = folder / name
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file missing")
    digest = _sha256(path)
    if digest != manifest["files"][name]:
        raise CheckpointError(f"{path}: SHA-256 {digest[:12]}... does not match the manifest "
                              f"({manifest['files'][name][:12]}...): corrupted or replaced; refusing to resume")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if spec is not None and json.dumps(blob["spec"], sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise CheckpointError(f"{path}: model spec differs from this run's configuration; refusing to resume")
    blob["state"] = {k: v.numpy() for k, v in blob["state"].items()}
    return blob

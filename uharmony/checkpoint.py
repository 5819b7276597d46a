"""Checkpoints: model spec + global state + round (+ strategy), written atomically with SHA-256.

``<run>/checkpoints/round-NNN.pt`` and ``<run>/checkpoints/manifest.json``
(``{"latest": "round-NNN.pt", "files": {name: sha256}}``); ``<run>/final_model.pt`` with its own manifest.
A file holds only tensors, numbers and strings (the spec as JSON) and is read with
``torch.load(weights_only=True)``: a checkpoint cannot run code. Loading refuses a file whose digest
differs from the manifest or whose model spec differs from the one expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .files import atomic_write, sha256_file
from .signing import SignatureError, sign_manifest, verify_manifest

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(
    folder: str | Path,
    server_round: int,
    spec: dict,
    state: dict[str, torch.Tensor],
    extra: dict | None = None,
    name: str | None = None,
    signer=None,
) -> Path:
    """Write a checkpoint and update the folder's manifest; ``signer`` (an Ed25519 private key) signs it."""
    folder = Path(folder)
    name = name or f"round-{server_round:03d}.pt"
    blob = {
        "round": int(server_round),
        "spec": json.dumps(spec, sort_keys=True),
        "state": {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()},
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    path = atomic_write(folder / name, lambda p: torch.save(blob, p))
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": {}}
    manifest["files"][name] = sha256_file(path)
    if name.startswith("round-"):
        manifest["latest"] = name
    atomic_write(manifest_path, json.dumps(manifest, indent=2))
    if signer is not None:
        sign_manifest(folder, signer)
    return path


def load_checkpoint(
    folder: str | Path, name: str | None = None, spec: dict | None = None, trusted: list | None = None
) -> dict:
    """Load (by default the latest) checkpoint after verifying its digest and, if given, its spec and that
    its manifest is signed by one of the ``trusted`` Ed25519 public keys.

    Returns ``{"round", "spec" (dict), "state" ({key: tensor}), "extra" (dict)}``.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{manifest_path}: no checkpoint manifest; nothing to resume")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"{manifest_path}: not a checkpoint manifest") from None
    if trusted is not None:
        try:
            verify_manifest(folder, trusted)
        except SignatureError as exc:
            raise CheckpointError(str(exc)) from None
    name = name or manifest.get("latest")
    if not name or name not in files:
        raise CheckpointError(f"{manifest_path}: no entry for checkpoint {name!r}")
    path = folder / name
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file missing")
    digest = sha256_file(path)
    if digest != files[name]:
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:12]}... does not match the manifest "
            f"({str(files[name])[:12]}...): corrupted or replaced; refusing to load it"
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        out = {
            "round": int(blob["round"]),
            "spec": json.loads(blob["spec"]),
            "extra": json.loads(blob["extra"]),
            "state": dict(blob["state"]),
        }
    except Exception as exc:  # noqa: BLE001 - any unreadable content is the same answer: refuse it
        raise CheckpointError(f"{path}: not a checkpoint of this project ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out["state"].items()):
        raise CheckpointError(f"{path}: 'state' must map names to tensors")
    _add_reach(out["state"])
    if spec is not None and json.dumps(out["spec"], sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise CheckpointError(f"{path}: model spec differs from this run's configuration; refusing to resume")
    return out


def _add_reach(state: dict) -> None:
    """A checkpoint written before the gate prototypes' reach: each prototype gets reach 0 (unknown: the gate's
    "none of these" test stays off for its domain), so the file loads into today's model."""
    for key in [k for k in state if k.endswith(".prototype")]:
        stem = key[: -len("prototype")]
        if stem + "count" in state and stem + "reach" not in state:
            state[stem + "reach"] = torch.zeros((), dtype=state[stem + "count"].dtype)

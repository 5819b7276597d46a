"""Checkpoints: model spec + global state + round (+ strategy), written atomically with SHA-256.

``<run>/checkpoints/round-NNN.pt`` and ``<run>/checkpoints/manifest.json``
(``{"latest": "round-NNN.pt", "files": {name: sha256}, "releases": {name: release record}}``);
``<run>/final_model.pt`` with its own manifest. A file holds only tensors, numbers and strings (the spec as
JSON) and is read with ``torch.load(weights_only=True)``: a checkpoint cannot run code. Loading refuses a
file whose digest differs from the manifest or whose model spec differs from the one expected.

A model file is self-contained: its ``extra["inference"]`` (``inference_settings``) holds what inference
needs beside the spec (spacing, patch size, modalities, regions, the preprocessing), covered by the file's
digest and so by the manifest's signature; the release record (``uharmony.records.release``) binds the file to
its run, round, kind and validity.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from uharmony.files import atomic_write, read_small, sha256_file
from uharmony.records.release import kind_of, release_record
from uharmony.records.signing import MANIFEST_BYTES, SignatureError, sign_manifest, verify_manifest

MANIFEST = "manifest.json"
PREPROCESSING = "uharmony-1"  # RAS, resample (bilinear), crop to foreground (margin 2), z-score non-zero voxels
SPACING_MM = (0.3, 20.0)
PATCH = (8, 512)


class CheckpointError(RuntimeError):
    pass


def inference_settings(spec: dict, spacing: float, patch_size: int) -> dict:
    """What running the model needs beside its weights, for ``extra["inference"]`` of a checkpoint."""
    return {
        "spacing-mm": float(spacing),
        "patch-size": int(patch_size),
        "modalities": list(spec.get("modalities", [])),
        "regions": list(spec.get("regions", [])),
        "preprocessing": PREPROCESSING,
    }


def settings_of(blob: dict, where) -> dict | None:
    """The checked inference settings of a loaded checkpoint (None for a file written before they were
    recorded); CheckpointError for settings this version cannot honour or that contradict the spec."""
    raw = blob["extra"].get("inference")
    if raw is None:
        return None
    try:
        spacing, patch = float(raw["spacing-mm"]), int(raw["patch-size"])
        pre = raw["preprocessing"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed inference settings ({type(exc).__name__}: {exc})") from None
    if not SPACING_MM[0] <= spacing <= SPACING_MM[1]:
        raise CheckpointError(f"{where}: spacing {spacing} mm outside {list(SPACING_MM)}")
    if not PATCH[0] <= patch <= PATCH[1] or patch % 8:
        raise CheckpointError(f"{where}: patch size {patch} is not a multiple of 8 in {list(PATCH)}")
    if pre != PREPROCESSING:
        raise CheckpointError(f"{where}: preprocessing {pre!r} is not {PREPROCESSING!r} (a newer uharmony-fl?)")
    for key in ("modalities", "regions"):
        if key in blob["spec"] and list(raw.get(key, [])) != list(blob["spec"][key]):
            raise CheckpointError(f"{where}: inference settings' {key} differ from the model spec's")
    return {"spacing-mm": spacing, "patch-size": patch, "preprocessing": pre}


def save_checkpoint(
    folder: str | Path,
    server_round: int,
    spec: dict,
    state: dict[str, torch.Tensor],
    extra: dict | None = None,
    name: str | None = None,
    signer=None,
    valid_days: float | None = None,
) -> Path:
    """Write a checkpoint and update the folder's manifest with its digest and release record (run id from
    ``extra["run-id"]``; kind ``final`` for ``final_model.pt``, else ``checkpoint``; valid ``valid_days``,
    by default ``uharmony.records.release.VALID_DAYS``); ``signer`` (an Ed25519 private key) signs the manifest."""
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
    digest = manifest["files"][name] = sha256_file(path)
    run_id = str((extra or {}).get("run-id", ""))
    record = release_record(name, digest, run_id, server_round, kind_of(name), valid_days)
    manifest.setdefault("releases", {})[name] = record
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
        if name is None:  # the latest checkpoint of a run folder: resuming
            raise CheckpointError(f"{manifest_path}: no checkpoint manifest; nothing to resume")
        raise CheckpointError(
            f"{folder / name}: no {MANIFEST} beside it (copy the {MANIFEST} and manifest.sig written with the "
            "model file: they hold its digest and the coordinator's signature)"
        )
    try:
        manifest = json.loads(read_small(manifest_path, MANIFEST_BYTES))  # a released model's: from elsewhere
        files = dict(manifest["files"])
    except (OSError, KeyError, TypeError, ValueError) as exc:  # too large, a FIFO or folder, not JSON, not one
        raise CheckpointError(f"{manifest_path}: not a checkpoint manifest ({str(exc)[-200:]})") from None
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
    out = read_checkpoint_file(path)
    out["sha256"], out["release"] = digest, (manifest.get("releases") or {}).get(name)
    if spec is not None and json.dumps(out["spec"], sort_keys=True) != json.dumps(spec, sort_keys=True):
        raise CheckpointError(f"{path}: model spec differs from this run's configuration; refusing to resume")
    return out


def read_checkpoint_file(path: str | Path) -> dict:
    """A checkpoint file's content, read with ``weights_only=True`` (nothing in it can run code), without a
    manifest: its digest and signature are the caller's to check."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        out = {
            "round": int(blob["round"]),
            "spec": json.loads(blob["spec"]),
            "extra": json.loads(blob["extra"]),
            "state": dict(blob["state"]),
        }
        if not isinstance(out["spec"], dict) or not isinstance(out["extra"], dict):
            raise TypeError("'spec' and 'extra' must be JSON objects")
    except Exception as exc:  # noqa: BLE001 - any unreadable content is the same answer: refuse it
        raise CheckpointError(f"{path}: not a checkpoint of this project ({type(exc).__name__}: {exc})") from None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out["state"].items()):
        raise CheckpointError(f"{path}: 'state' must map names to tensors")
    _add_reach(out["state"])
    return out


def _add_reach(state: dict) -> None:
    """A checkpoint written before the gate prototypes' reach: each prototype gets reach 0 (unknown: the gate's
    "none of these" test stays off for its domain), so the file loads into today's model."""
    for key in [k for k in state if k.endswith(".prototype")]:
        stem = key[: -len("prototype")]
        if stem + "count" in state and stem + "reach" not in state:
            state[stem + "reach"] = torch.zeros((), dtype=state[stem + "count"].dtype)

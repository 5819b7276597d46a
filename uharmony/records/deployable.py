"""Opening a released model file at a hospital: digest, signature, release record, inference settings.

``final_model.pt`` is self-contained: its ``extra["inference"]`` holds the spacing, patch size, modalities,
regions and preprocessing, inside the digest the signed manifest covers, so nothing beside it (no
``config.json``) changes what runs. With trusted keys the file must come with its ``manifest.json`` and
``manifest.sig``, carry a release record that may run now, and record its settings. Without keys the file
alone loads (safely: ``weights_only=True``), with a warning for each thing that is not checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from uharmony.files import sha256_file
from uharmony.records.checkpoint import MANIFEST, CheckpointError, load_checkpoint, read_checkpoint_file, settings_of
from uharmony.records.release import ReleaseError, Revocations, check_release


def open_model_file(
    path: str | Path,
    trusted: list | None = None,
    allow_checkpoint: bool = False,
    revoked: Revocations | None = None,
    warn: Callable[[str], None] = lambda text: None,
    accept: tuple[str, ...] = ("final",),
) -> dict:
    """The checkpoint at ``path`` (``load_checkpoint``'s dict) with ``"settings"`` ({"spacing-mm",
    "patch-size", ...}); CheckpointError naming the file and the reason it may not run. ``accept``: the
    release kinds that run without ``allow_checkpoint`` (``uharmony.records.release``)."""
    path = Path(path)
    if not (path.parent / MANIFEST).exists() and trusted is None:
        warn(f"{path}: no {MANIFEST} beside it: its digest and release are not checked")
        blob = read_checkpoint_file(path)
        blob["sha256"], blob["release"] = sha256_file(path), None
    else:
        blob = load_checkpoint(path.parent, path.name, trusted=trusted)
    try:
        if blob["release"] is not None or trusted is not None:
            check_release(blob["release"], path.name, blob["sha256"], allow_checkpoint, revoked, accept=accept)
        elif revoked is not None and (why := revoked.reason({"sha256": blob["sha256"]})):
            raise ReleaseError(f"{path.name}: revoked: {why}")
    except ReleaseError as exc:
        raise CheckpointError(f"{path.parent}/{exc}") from None  # the message starts with the file name
    settings = settings_of(blob, path)
    if settings is None:
        settings = _legacy_settings(path, trusted is not None, warn)
    blob["settings"] = settings
    return blob


def _legacy_settings(path: Path, signed: bool, warn: Callable[[str], None]) -> dict:
    """A model file written before it recorded its settings: only unsigned use, from ``config.json`` beside it
    (never a silent default)."""
    if signed:
        raise CheckpointError(
            f"{path}: records no inference settings (spacing, patch size): written before model files were "
            "self-contained, and the config.json beside it is not covered by the signature; ask for a new release"
        )
    cfg_path = path.parent / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        spacing, patch = float(cfg["spacing"]), int(cfg["patch-size"])
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: records no spacing and patch size, and there is no config.json of its run beside it"
        ) from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path}: no usable spacing and patch-size ({type(exc).__name__}: {exc})") from None
    warn(f"{path}: records no inference settings; using spacing {spacing} mm and patch {patch} from {cfg_path}")
    raw = {"spacing-mm": spacing, "patch-size": patch, "preprocessing": "uharmony-1"}
    return settings_of({"extra": {"inference": raw}, "spec": {}}, cfg_path)

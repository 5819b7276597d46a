"""The site state folder: site-local parameters and harmonization statistics, kept on the site's disk.

Written atomically (temporary file + rename) so a SuperNode killed mid-write never leaves a torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

STATE_FILE = "local_state.pt"


def save_local_state(folder: str | Path, state: dict[str, torch.Tensor], info: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save({"state": state, "info": info}, tmp)
    os.replace(tmp, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "local_state.json").write_text(json.dumps({**info, "sha256": digest}, indent=2))
    return path


def load_local_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable site state ({exc}); move it away to start the site fresh") from exc
    return blob["state"], blob["info"]

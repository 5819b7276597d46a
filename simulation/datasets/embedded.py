"""The embedded default federation: generated on first use into a cache folder, atomically."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ..synth import generate_federation


def cache_root() -> Path:
    return Path(os.environ.get("UHARMONY_CACHE", Path.home() / ".cache" / "uharmony"))


def embedded_federation(sites: int = 4, cases_per_site: int = 8, seed: int = 0, spacing: float = 3.0,
                        progress: bool = True) -> Path:
    """Path of the synthetic federation with these settings, generating it if absent.

    Safe against concurrent callers (file lock) and interruptions (generated in a temporary folder,
    then renamed into place).
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"synthetic-{sites}x{cases_per_site}-seed{seed}-{spacing:g}mm"
    if (path / "federation.json").exists():
        return path
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "federation.json").exists():
            tmp = path.with_name(path.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            generate_federation(tmp, sites, cases_per_site, seed, spacing, progress=progress)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    return path

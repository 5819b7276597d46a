"""The embedded default federation: generated on first use into a cache folder, atomically."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from ..synth import generate_federation
from ..synth.profiles import make_join_profile, make_site_profile


def cache_root() -> Path:
    return Path(os.environ.get("UHARMONY_CACHE", Path.home() / ".cache" / "uharmony"))


def embedded_federation(sites: int = 4, cases_per_site: int = 8, seed: int = 0, spacing: float = 3.0,
                        progress: bool = True, join_sites: int = 0) -> Path:
    """Path of the synthetic federation with these settings, generating it if absent.

    ``join_sites``: the last ``join_sites`` of the ``sites`` are post-operative sites with an extra ADC
    contrast and BraTS 2024 labels (resection cavity): sites that join a running federation with a
    modality and a class it has not seen (``make_join_profile``).

    Safe against concurrent callers (file lock) and interruptions (generated in a temporary folder,
    then renamed into place).
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if not 0 <= join_sites < sites:
        raise ValueError(f"join_sites must be in [0, sites), got {join_sites} with sites={sites}")
    join = f"-join{join_sites}" if join_sites else ""
    path = root / f"synthetic-{sites}x{cases_per_site}{join}-seed{seed}-{spacing:g}mm"
    profiles = [make_site_profile(seed, i) for i in range(sites - join_sites)] + [
        make_join_profile(seed, i) for i in range(sites - join_sites, sites)]
    if (path / "federation.json").exists():
        return path
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / "federation.json").exists():
            tmp = path.with_name(path.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            generate_federation(tmp, sites, cases_per_site, seed, spacing, progress=progress, profiles=profiles)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    return path

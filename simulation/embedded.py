"""The embedded default federation: generated on first use into the cache folder, atomically.

The data layer knows where a run's embedded federation lives (``uharmony.data.federation_root``);
this module makes it. ``uharmony-data embedded --run-config "seed=1"`` does it for a run config, which
``scripts/main.sh`` calls before ``flwr run``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

from uharmony.data.manifest import MANIFEST, cache_root, embedded_name
from uharmony.federation.config import RunConfig

from .synth import generate_federation
from .synth.profiles import make_join_profile, make_site_profile
from .synth.scenarios import scenario_profiles


def embedded_federation(
    sites: int = 4,
    cases_per_site: int = 8,
    seed: int = 0,
    spacing: float = 3.0,
    progress: bool = True,
    join_sites: int = 0,
    scenario: str = "",
    kappa: float = 1.0,
    val_cases: int = 0,
    reference: bool = False,
) -> Path:
    """Path of the synthetic federation with these settings, generating it if absent.

    ``scenario``: one of the benchmark's scenarios (``synth.scenarios``: S0, S1, S2 at strength ``kappa``),
    which fixes its own sites (``sites`` and ``join_sites`` are then not used). Otherwise the development
    federation: ``sites`` sites, the last ``join_sites`` of them post-operative with an extra ADC contrast
    and BraTS 2024 labels (resection cavity), which join a running federation with a modality and a class
    it has not seen (``make_join_profile``).

    Safe against concurrent callers (file lock) and interruptions (generated in a temporary folder,
    then renamed into place). ``val_cases``: held-out validation cases per site beyond the others
    (``synth.generate_federation``); ``reference``: each scan also written without its noise.
    """
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    if not 0 <= join_sites < sites:
        raise ValueError(f"join_sites must be in [0, sites), got {join_sites} with sites={sites}")
    path = root / embedded_name(sites, cases_per_site, seed, spacing, join_sites, scenario, kappa, val_cases, reference)
    if (path / MANIFEST).exists():
        return path
    if scenario:
        profiles = scenario_profiles(scenario, seed, cases_per_site, kappa)
    else:
        profiles = [make_site_profile(seed, i) for i in range(sites - join_sites)] + [
            make_join_profile(seed, i) for i in range(sites - join_sites, sites)
        ]
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / MANIFEST).exists():
            tmp = path.with_name(path.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            kw = {"progress": progress, "profiles": profiles, "val_cases": val_cases, "reference": reference}
            generate_federation(tmp, len(profiles), cases_per_site, seed, spacing, **kw)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
    return path


def ensure_federation(cfg: RunConfig, progress: bool = True) -> Path:
    """The run's federation folder: ``data-root``, or the embedded federation (generated if needed)."""
    if cfg.data_root:
        return Path(cfg.data_root)
    return embedded_federation(
        cfg.synth_sites,
        cfg.synth_cases_per_site,
        cfg.federation_seed,
        cfg.synth_spacing,
        progress=progress,
        join_sites=cfg.synth_join_sites,
        scenario=cfg.synth_scenario,
        kappa=cfg.synth_kappa,
        val_cases=cfg.synth_val_cases,
        reference=cfg.synth_reference,
    )

"""Find this node's data from Flower's node config (plain dicts in, datasets out)."""

from __future__ import annotations

from pathlib import Path

from simulation.datasets import MODALITIES, REGIONS, SiteData, load_federation
from simulation.datasets.embedded import embedded_federation
from simulation.datasets.federation import Site, load_site_folder
from uharmony.config import RunConfig

_SITE_DATA: dict[tuple, SiteData] = {}  # per process: rounds reuse the preprocessed cases


def federation_root(cfg: RunConfig) -> Path:
    if cfg.data_root:
        return Path(cfg.data_root)
    if cfg.data_kind != "synthetic":
        raise ValueError(f"run config: 'data-root' is required for data-kind {cfg.data_kind!r}")
    return embedded_federation(cfg.synth_sites, cfg.synth_cases_per_site, cfg.seed, cfg.synth_spacing,
                               join_sites=cfg.synth_join_sites)


def resolve_site(node_config: dict, cfg: RunConfig) -> tuple[Site, Path]:
    """(site, site state folder) for this node.

    Deployment: ``data-path`` and ``site-id`` (optional ``domain-id``, ``state-dir``).
    Simulation: ``partition-id`` selects a site of the configured federation.
    """
    if "data-path" in node_config:
        site_id = str(node_config.get("site-id", "")).strip()
        if not site_id:
            raise ValueError("node config: 'site-id' is required with 'data-path'")
        path = Path(str(node_config["data-path"]))
        try:
            domain = int(node_config.get("domain-id", 0))
        except (TypeError, ValueError):
            raise ValueError(f"node config: 'domain-id' must be an integer, got {node_config.get('domain-id')!r}") from None
        site = load_site_folder(path, site_id, domain, seed=cfg.seed)
        state = Path(str(node_config.get("state-dir", path / ".uharmony-state")))
        return site, state
    if "partition-id" in node_config:
        fed = load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None, seed=cfg.seed)
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(fed.sites):
            raise ValueError(f"node config: partition-id {pid} but the federation at {fed.root} has "
                             f"{len(fed.sites)} sites ({[s.name for s in fed.sites]})")
        site = fed.sites[pid]
        return site, Path(cfg.run_dir) / "site-state" / f"site-{site.name}"
    raise ValueError("node config needs 'data-path' and 'site-id' (hospital SuperNode) or "
                     "'partition-id' (simulation)")


def site_data(site: Site, cfg: RunConfig, modalities=MODALITIES, regions=REGIONS) -> SiteData:
    """The site's preprocessed cases in the model's channel layout (``modalities`` in, ``regions`` out)."""
    layout = (tuple(modalities), tuple(regions))
    key = (site.name, tuple(c.case_id for c in site.train), tuple(c.case_id for c in site.val), cfg.spacing,
           cfg.patch_size, layout)
    if key not in _SITE_DATA:
        _SITE_DATA[key] = SiteData(site, cfg.spacing, cfg.patch_size, *layout)
    return _SITE_DATA[key]

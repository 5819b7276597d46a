"""Which data a node holds, from Flower's node config (plain dicts in, a ``Site`` out).

Deployment (a hospital's SuperNode): ``data-path`` and ``site-id`` (optional ``domain-id``,
``state-dir``). Simulation: ``partition-id`` selects a site of the run's federation manifest.
"""

from __future__ import annotations

from pathlib import Path

from uharmony.data.cases import Site, load_site_folder
from uharmony.data.manifest import cache_root, federation_root, load_federation
from uharmony.files import private_dir, private_tree


def resolve_site(node_config: dict, cfg, pooled: bool = False) -> tuple[Site, Path, Path]:
    """(site, site state folder, preprocessed-scan cache folder) for this node. The state folder is made
    0700 (a hospital's, with everything in it narrowed to 0700/0600); the cache folder is made 0700 when
    first written.

    ``pooled``: the node trains on every site's data (the centralized baseline), which only a simulated
    node can do.
    """
    if "data-path" in node_config:
        if pooled:
            raise ValueError(
                "a hospital's node cannot train on pooled data (strategy 'centralized' is simulation only)"
            )
        site_id = str(node_config.get("site-id", "")).strip()
        if not site_id:
            raise ValueError("node config: 'site-id' is required with 'data-path'")
        path = Path(str(node_config["data-path"]))
        try:
            domain = int(node_config.get("domain-id", 0))
        except (TypeError, ValueError):
            raise ValueError(
                f"node config: 'domain-id' must be an integer, got {node_config.get('domain-id')!r}"
            ) from None
        if domain < 0:
            raise ValueError(f"node config: 'domain-id' must be >= 0, got {domain}")
        site = load_site_folder(path, site_id, domain, seed=cfg.federation_seed)
        state = Path(str(node_config.get("state-dir", path / ".uharmony-state")))
        private_tree(private_dir(state))  # scans, labels, statistics, per-case scores: the site's user's alone
        return site, state, state / "preprocessed"
    if "partition-id" in node_config:
        fed = load_federation(federation_root(cfg), seed=cfg.federation_seed)
        try:
            pid = int(node_config["partition-id"])
        except (TypeError, ValueError):
            raise ValueError(
                f"node config: 'partition-id' must be an integer, got {node_config['partition-id']!r}"
            ) from None
        if not 0 <= pid < len(fed.sites):
            raise ValueError(
                f"node config: partition-id {pid} but the federation at {fed.root} has "
                f"{len(fed.sites)} sites ({[s.name for s in fed.sites]})"
            )
        site = fed.pooled() if pooled else fed.sites[pid]
        state = private_dir(Path(cfg.run_dir) / "site-state" / f"site-{site.name}")
        return site, state, cache_root() / "preprocessed"
    raise ValueError("node config needs 'data-path' and 'site-id' (hospital SuperNode) or 'partition-id' (simulation)")

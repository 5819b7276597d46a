"""What a site tells the server when it joins (Flower-free): identity, modalities, annotated regions.

The profile holds names and counts only: no image, label, statistic or parameter leaves the site
through it; a label-free site's says so (``labelled`` false, no regions).
The server uses it to decide whether the model must grow (a new modality stem, a new
output class, a new domain expert) before the site trains.
"""

from __future__ import annotations

from uharmony import protocol as P
from uharmony.data import resolve_site
from uharmony.federation.config import RunConfig


def site_profile(node_config: dict, cfg: RunConfig, server_round: int) -> dict:
    """The site's profile for ``server_round``.

    In simulation (``partition-id``), ``join-schedule`` makes a site's SuperNode answer "not ready"
    before its join round, as if it had not been started yet; a hospital's SuperNode is always ready.
    """
    site = resolve_site(node_config, cfg)[0]
    ready = True
    if "partition-id" in node_config:
        ready = server_round >= cfg.join_rounds().get(site.name, 1)
    return {
        P.SITE_ID: site.name,
        P.DOMAIN_ID: int(site.domain),
        P.MODALITIES: ",".join(site.modalities),
        P.REGIONS: ",".join(site.region_names) if site.labelled else "",
        P.TRAIN_CASES: len(site.train),
        P.LABELLED: site.labelled,
        P.READY: ready,
    }

"""The data layer every package stands on (Flower-free): cases and sites, a hospital's data folder,
simulated federations' manifests, label protocols and regions, reading and preprocessing NIfTI scans."""

import importlib

from uharmony.data.cases import MODALITIES, Case, DataError, Federation, Site, load_site_folder
from uharmony.data.manifest import federation_root, load_federation, write_manifest
from uharmony.data.nodes import resolve_site
from uharmony.data.regions import LABEL_MAPS, REGIONS, annotated_regions, labels_to_regions, protocol_regions

# Reading and preprocessing scans need torch and MONAI: their names are loaded on first use (PEP 562), so
# that cases, sites and manifests (a site's profile, the synthetic data's generator) stay light.
_HEAVY = {"SiteData": "pipeline", "preprocess_transform": "pipeline", "read_case": "reading"}


def __getattr__(name: str):
    if name in _HEAVY:
        return getattr(importlib.import_module(f".{_HEAVY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LABEL_MAPS",
    "MODALITIES",
    "REGIONS",
    "Case",
    "DataError",
    "Federation",
    "Site",
    "SiteData",
    "annotated_regions",
    "federation_root",
    "labels_to_regions",
    "load_federation",
    "load_site_folder",
    "preprocess_transform",
    "protocol_regions",
    "read_case",
    "resolve_site",
    "write_manifest",
]

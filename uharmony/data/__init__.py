"""The data layer every package stands on (Flower-free): cases and sites, a hospital's data folder,
simulated federations' manifests, label protocols and regions, reading and preprocessing NIfTI scans."""

from .cases import MODALITIES, Case, DataError, Federation, Site, load_site_folder
from .manifest import federation_root, load_federation, write_manifest
from .nodes import resolve_site
from .pipeline import SiteData, preprocess_transform
from .reading import read_case
from .regions import LABEL_MAPS, REGIONS, annotated_regions, labels_to_regions, protocol_regions

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

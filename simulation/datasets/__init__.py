"""Datasets: public loaders partitioned by institution, the synthetic federation, the MONAI pipeline."""

from .federation import KINDS, MODALITIES, Case, DataError, Federation, Site, load_federation
from .pipeline import SiteData
from .regions import REGIONS

__all__ = ["KINDS", "MODALITIES", "REGIONS", "Case", "DataError", "Federation", "Site", "SiteData", "load_federation"]

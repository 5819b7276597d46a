"""Embedded synthetic multi-institution brain-lesion federation built on real MNI152 anatomy."""

from .generate import generate_federation
from .profiles import SiteProfile, make_site_profile

__all__ = ["SiteProfile", "generate_federation", "make_site_profile"]

"""MONAI loading pipeline: deterministic preprocessing (cached) + random patch sampling for training.

Deterministic: orientation RAS, resampling to the target spacing, crop to the brain (foreground),
per-modality z-score on brain voxels, labels -> ET/TC/WT region masks. Random: pad, patches balanced
between lesion and background, left-right flips, intensity scale/shift.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.transforms import (
    Compose, CropForegroundd, NormalizeIntensityd, Orientationd, RandCropByPosNegLabeld, RandFlipd,
    RandScaleIntensityd, RandShiftIntensityd, Spacingd, SpatialPadd,
)

from .federation import MODALITIES, Case, DataError, Site
from .reading import read_case
from .regions import REGIONS, LabelToRegionsd, annotated_regions

log = logging.getLogger(__name__)
_CACHE: dict[tuple, dict] = {}  # per process: rounds of a simulation reuse preprocessed cases


def preprocess_transform(spacing: float, with_label: bool = True, regions: Sequence[str] = REGIONS) -> Compose:
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps = [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=(spacing,) * 3, mode=modes),
        CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if with_label:
        steps.append(LabelToRegionsd("label", regions=regions))
    return Compose(steps)


def train_transform(patch: int, samples: int = 1, neg_ratio: float = 1.0) -> Compose:
    keys = ["image", "label"]
    return Compose([
        SpatialPadd(keys=keys, spatial_size=(patch,) * 3),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=neg_ratio,
                               num_samples=samples, image_key="image", image_threshold=0, allow_smaller=False),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])


def load_preprocessed(case: Case, spacing: float, modalities: Sequence[str] = MODALITIES,
                      regions: Sequence[str] = REGIONS) -> dict:
    """One case read into the channel layout ``modalities`` -> ``regions`` and preprocessed (cached)."""
    modalities, regions = tuple(modalities), tuple(regions)
    key = (case.case_id, case.label, tuple(sorted(case.images.items())), case.image4d, spacing, modalities, regions)
    if key not in _CACHE:
        item = read_case(case, modalities)
        item = preprocess_transform(spacing, with_label="label" in item, regions=regions)(item)
        item["regions"] = torch.tensor(annotated_regions(case.label_map, regions))
        _CACHE[key] = item
    return _CACHE[key]


class SiteData:
    """A site's preprocessed train/val cases; bad cases are skipped, counted and reported.

    ``modalities`` and ``regions`` are the model's input and output channel order.
    """

    def __init__(self, site: Site, spacing: float = 3.0, patch: int = 32, modalities: Sequence[str] = MODALITIES,
                 regions: Sequence[str] = REGIONS) -> None:
        self.site = site
        self.spacing = spacing
        self.patch = patch
        self.modalities, self.regions = tuple(modalities), tuple(regions)
        self.skipped: list[dict] = list(site.skipped)
        self.train = self._prepare(site.train)
        self.val = self._prepare(site.val)

    def _prepare(self, cases: list[Case]) -> list[dict]:
        items = []
        for case in cases:
            try:
                items.append(load_preprocessed(case, self.spacing, self.modalities, self.regions))
            except DataError as exc:
                log.warning("site %s: skipping case %s: %s", self.site.name, case.case_id, exc)
                self.skipped.append({"case": case.case_id, "file": exc.path, "reason": exc.reason})
        return items

    @property
    def num_train_cases(self) -> int:
        return len(self.train)

    def batches(self, batch_size: int, steps: int, seed: int, neg_ratio: float = 1.0) -> Iterator[dict]:
        """``steps`` random-patch batches (cycling through the training cases)."""
        if not self.train:
            raise DataError(self.site.name, "site has no usable training case")
        ds = Dataset([{k: v for k, v in it.items() if k in ("image", "label", "present", "regions")}
                      for it in self.train], transform=train_transform(self.patch, neg_ratio=neg_ratio))
        ds.transform.set_random_state(seed=seed % (2**32))
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0, generator=gen, drop_last=False)
        done = 0
        while done < steps:
            for batch in loader:
                yield batch
                done += 1
                if done >= steps:
                    return

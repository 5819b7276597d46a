"""MONAI pipeline: deterministic preprocessing (cached on disk) + random patch sampling for training.

Deterministic: read and validate the case, orientation RAS, resampling to the target spacing, crop to
the brain (foreground), per-modality z-score on brain voxels, labels -> region masks. Its result is
kept by MONAI's ``PersistentDataset`` (plain tensors, loaded with ``weights_only=True``) in a cache
folder: the site's own state folder at a hospital, so the next round's process reads it instead of
resampling again. Random: pad, patches balanced between lesion and background, left-right flips,
intensity scale/shift.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from monai.data import DataLoader, Dataset, MetaTensor, PersistentDataset
from monai.transforms import (
    Compose,
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Spacingd,
    SpatialPadd,
    Transform,
)

from uharmony.data.cases import MODALITIES, Case, DataError, Site
from uharmony.data.reading import read_case
from uharmony.data.redaction import error_category
from uharmony.data.regions import REGIONS, annotated_regions, labels_to_regions
from uharmony.files import PRIVATE_FILE, private_dir

log = logging.getLogger(__name__)
BATCH_KEYS = ("image", "label", "present", "regions", "domain", "tumour_type")


class LabelToRegionsd(MapTransform):
    """MONAI dictionary transform: ``label`` (1, *spatial) -> (R, *spatial) region masks."""

    def __init__(self, keys="label", label_map_key: str = "protocol", regions: Sequence[str] = REGIONS) -> None:
        super().__init__(keys)
        self.label_map_key = label_map_key
        self.regions = tuple(regions)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            regions = labels_to_regions(d[key], d[self.label_map_key], self.regions)
            if isinstance(d[key], MetaTensor):
                regions = MetaTensor(regions, meta=d[key].meta)
            d[key] = regions
        return d


PIPELINE_VERSION = 2  # in every cache key: 2 added the magnitude floor and the reference scans


class BrainScaled(MapTransform):
    """Before the z-score: each channel's mean and SD over its non-zero voxels (what ``NormalizeIntensityd``
    with ``nonzero`` uses) give ``floor`` (C,), where a raw intensity of 0 lands after the z-score (the floor
    of a magnitude image, for Rician noise), and z-score ``reference`` (a case's noise-free copy, if read)
    with the *scan's* statistics, so the two are compared in the same units."""

    def __init__(self) -> None:
        super().__init__(keys=["image"])

    def __call__(self, data: dict) -> dict:
        out = dict(data)
        image = torch.as_tensor(data["image"])
        floors, scaled = [], []
        ref = torch.as_tensor(data["reference"]) if "reference" in data else None
        for c in range(image.shape[0]):
            brain = image[c] != 0
            if not bool(brain.any()):
                floors.append(0.0)
                if ref is not None:
                    scaled.append(torch.zeros_like(ref[c]))
                continue
            mean, sd = image[c][brain].mean(), image[c][brain].std(unbiased=False).clamp_min(1e-8)
            floors.append(float(-mean / sd))
            if ref is not None:
                scaled.append(torch.where(brain, (ref[c] - mean) / sd, torch.zeros_like(ref[c])))
        out["floor"] = torch.tensor(floors, dtype=torch.float32)
        if ref is not None:  # a plain tensor from here: only scored, never inverted
            out["reference"] = torch.stack(scaled)
        return out


def preprocess_transform(
    spacing: float, with_label: bool = True, regions: Sequence[str] = REGIONS, reference: bool = False
) -> Compose:
    """The deterministic steps on a read case (``image`` MetaTensor, optional ``label`` and ``reference``);
    invertible."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    if reference:
        keys, modes = [*keys, "reference"], (*modes, "bilinear")
    steps = [
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=(spacing,) * 3, mode=modes),
        CropForegroundd(keys=keys, source_key="image", margin=2, allow_smaller=True),
        BrainScaled(),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if with_label:
        steps.append(LabelToRegionsd("label", regions=regions))
    return Compose(steps)


def train_transform(patch: int, samples: int = 1, neg_ratio: float = 1.0) -> Compose:
    keys = ["image", "label"]
    return Compose(
        [
            SpatialPadd(keys=keys, spatial_size=(patch,) * 3),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=(patch,) * 3,
                pos=1,
                neg=neg_ratio,
                num_samples=samples,
                image_key="image",
                image_threshold=0,
                allow_smaller=False,
            ),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    )


class ReadCased(Transform):
    """A case description (``describe_case``) -> the read, validated case in the model's input layout;
    ``spacing``: the grid it will be resampled to (a file too large for it is refused from its header)."""

    def __init__(self, modalities: Sequence[str], spacing: float | None = None, reference: bool = False) -> None:
        self.modalities, self.spacing, self.reference = tuple(modalities), spacing, reference

    def __call__(self, data: dict) -> dict:
        case = Case(**{k: tuple(v) if k in ("modalities", "channels") else v for k, v in data["case"].items()})
        out = read_case(case, self.modalities, self.spacing)
        if self.reference and "reference" not in out:  # a case without one: its scan stands in, marked so
            out["reference"] = out["image"].clone()
            out["has-reference"] = torch.zeros(len(self.modalities), dtype=torch.bool)
        elif not self.reference:
            out.pop("reference", None)
            out.pop("has-reference", None)
        if "label" not in out:  # a label-free case: an empty label map (no region is annotated, none is scored)
            if case.label_map != "none":
                raise DataError(case.case_id, f"case has no label file but its site's protocol is {case.label_map!r}")
            out["label"] = MetaTensor(torch.zeros((1, *out["image"].shape[1:])), affine=out["image"].affine)
        return {**out, "domain": case.domain}


class CaseMeta(Transform):
    """Adds what training and evaluation need beside the tensors: the annotated-region mask and the spacing."""

    def __init__(self, label_map_key: str, regions: Sequence[str], spacing: float) -> None:
        self.label_map_key, self.regions, self.spacing = label_map_key, tuple(regions), float(spacing)

    def __call__(self, data: dict) -> dict:
        return {
            **data,
            "regions": torch.tensor(annotated_regions(data[self.label_map_key], self.regions)),
            "spacing": torch.full((3,), self.spacing),
            "domain": torch.tensor(int(data["domain"])),
        }


def describe_case(case: Case, layout: tuple) -> dict:
    """The cache key of a case: its files (with size and modification time, so a changed file is read
    again) and the layout and spacing it is prepared for."""
    files = [p for p in [*case.images.values(), case.image4d, case.label, *(case.reference or {}).values()] if p]
    stat = [[p, *((os.stat(p).st_size, os.stat(p).st_mtime_ns) if os.path.exists(p) else (-1, -1))] for p in files]
    return {
        "case": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(case).items()},
        "files": stat,
        "layout": [list(x) if isinstance(x, tuple) else x for x in layout],
    }


def _data_error(exc: BaseException) -> DataError | None:
    while exc is not None:
        if isinstance(exc, DataError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _root_error(exc: BaseException) -> BaseException:
    """The error a transform raised, under MONAI's wrapping (``applying transform ...``)."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    return seen


class PrivatePersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` whose cache files are 0600 in a 0700 folder, whatever the umask (they
    hold a patient's resampled scans and annotation)."""

    def __init__(self, data, transform, cache_dir) -> None:
        if cache_dir is not None:
            private_dir(cache_dir)
        super().__init__(data, transform, cache_dir)

    def _cachecheck(self, item_transformed):
        out = super()._cachecheck(item_transformed)
        if self.cache_dir is not None:
            name = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
            path = Path(self.cache_dir) / f"{name}.pt"
            if path.exists() and stat.S_IMODE(path.stat().st_mode) != PRIVATE_FILE:
                os.chmod(path, PRIVATE_FILE)
        return out


class SiteData:
    """A site's preprocessed train/val cases; bad cases are skipped, counted and reported.

    ``modalities`` and ``regions`` are the model's input and output channel order. ``cache_dir``: where
    preprocessed cases are kept between processes (None: computed in memory every time). ``types``: the type
    head's classes (a case of another type, or none, has ``tumour_type`` -1).
    """

    def __init__(
        self,
        site: Site,
        spacing: float = 3.0,
        patch: int = 32,
        modalities: Sequence[str] = MODALITIES,
        regions: Sequence[str] = REGIONS,
        cache_dir: str | Path | None = None,
        types: Sequence[str] = (),
    ) -> None:
        self.site = site
        self.types = tuple(types)  # the type head's classes: each item's "tumour_type" is its index (-1: none)
        self.spacing = spacing
        self.patch = patch
        self.modalities, self.regions = tuple(modalities), tuple(regions)
        self.skipped: list[dict] = list(site.skipped)
        reference = any(c.reference for c in site.cases)
        layout = (self.modalities, self.regions, float(spacing), PIPELINE_VERSION)
        steps = Compose(
            [
                ReadCased(self.modalities, spacing, reference),
                *preprocess_transform(spacing, True, self.regions, reference).transforms,
                CaseMeta("protocol", self.regions, spacing),
            ]
        )
        self._transform, self._cache_dir, self._layout = steps, cache_dir, layout
        self.train = self._prepare(site.train)
        self.val = self._prepare(site.val)

    def _prepare(self, cases: list[Case]) -> list[dict]:
        """The preprocessed cases; a case whose preparation fails in any way is skipped, counted and logged
        (a DataError names the file; any other error keeps its type in the reason), never the site's round."""
        ds = PrivatePersistentDataset([describe_case(c, self._layout) for c in cases], self._transform, self._cache_dir)
        items = []
        for i, case in enumerate(cases):
            try:
                kind = self.types.index(case.tumour_type) if case.tumour_type in self.types else -1
                items.append({**ds[i], "case_id": case.case_id, "tumour_type": kind})
            except Exception as exc:  # noqa: BLE001 - MONAI wraps a transform's error; one case, not the site
                err = _data_error(exc)
                if err is not None:
                    entry = {"case": case.case_id, "file": err.path, "reason": err.reason}
                else:
                    root = _root_error(exc)
                    entry = {"case": case.case_id, "reason": f"{type(root).__name__}: {str(root)[:300]}"}
                entry["category"] = error_category(err or _root_error(exc))
                log.warning("site %s: skipping case %s: %s", self.site.name, case.case_id, entry["reason"])
                self.skipped.append(entry)
        return items

    @property
    def num_train_cases(self) -> int:
        return len(self.train)

    def batches(self, batch_size: int, steps: int, seed: int, neg_ratio: float = 1.0) -> Iterator[dict]:
        """``steps`` random-patch batches (cycling through the training cases)."""
        if not self.train:
            raise DataError(self.site.name, "site has no usable training case")
        ds = Dataset(
            [{k: it[k] for k in BATCH_KEYS} for it in self.train],
            transform=train_transform(self.patch, neg_ratio=neg_ratio),
        )
        ds.transform.set_random_state(seed=seed % (2**32))
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0, generator=gen, drop_last=False)
        yield from _cycle(loader, steps)

    def scan_batches(self, batch_size: int, steps: int, seed: int, items: list[dict] | None = None) -> Iterator[dict]:
        """``steps`` batches of random patches anywhere in the scan, labels unused (denoising pretraining and
        recalibrating the harmonization statistics; a label-free site has nothing else)."""
        items = self.train if items is None else items
        if not items:
            raise DataError(self.site.name, "site has no usable scan")
        patch = (self.patch,) * 3
        ds = Dataset(
            [{k: it[k] for k in ("image", "present", "floor") if k in it} for it in items],
            transform=Compose(
                [
                    SpatialPadd(keys="image", spatial_size=patch),
                    RandSpatialCropd(keys="image", roi_size=patch, random_size=False),
                    RandFlipd(keys="image", prob=0.5, spatial_axis=0),
                ]
            ),
        )
        ds.transform.set_random_state(seed=seed % (2**32))
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0, generator=gen, drop_last=False)
        yield from _cycle(loader, steps)


def _cycle(loader, steps: int) -> Iterator[dict]:
    done = 0
    while done < steps:
        for batch in loader:
            yield batch
            done += 1
            if done >= steps:
                return

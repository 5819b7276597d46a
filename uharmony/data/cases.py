"""Cases and sites (FLamby-like: one API for every site), and a hospital's own data folder.

    site = load_site_folder("/data/brats-site", "hospital-a", domain=0)   # a hospital (deployment)
    site.train / site.val                                                 # lists of Case

A simulated federation lists its sites in a manifest (``uharmony.data.manifest``); both give ``Site``.
No image is read here (see ``reading`` and ``pipeline``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from uharmony.data.case_types import attach_types
from uharmony.data.errors import DataError
from uharmony.data.redaction import redact_paths  # noqa: F401 - where callers have always found it
from uharmony.data.regions import LABEL_MAPS, annotated_regions, protocol_regions
from uharmony.files import read_small
from uharmony.vocabulary import MODALITIES

MODALITY_NAME = re.compile(r"[a-z][a-z0-9]*")
BRATS23_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")  # order of the 4-D MSD images (FLAIR, T1w, t1gd, T2w)
SPLITS = ("train", "val")  # what a manifest may fix a case to (a held-out validation set, say)


@dataclass
class Case:
    case_id: str
    images: dict[str, str]  # modality -> file
    label: str | None
    label_map: str
    modalities: tuple[str, ...]  # modalities this case is expected to have
    image4d: str | None = None  # one 4-D file holding every channel, in ``channels`` order (MSD)
    channels: tuple[str, ...] = MSD_CHANNELS
    domain: int = 0  # the domain of the site it comes from (a pooled site mixes domains)
    split: str | None = None  # "train" / "val": fixed by the manifest (a held-out set); None: the seeded split
    # modality -> a noise-free (simulated) or high-SNR reference of the same scan: denoising is scored against it
    reference: dict[str, str] | None = None
    tumour_type: str | None = None  # the scan-level label of UMS-Rep's second task (uharmony.data.case_types)


@dataclass
class Site:
    name: str
    domain: int
    cases: list[Case]
    label_map: str
    modalities: tuple[str, ...]
    train: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"case"/"file", "reason", "category"}
    unmatched_types: int = 0  # rows of types.csv naming no usable case (uharmony.data.case_types), kept here

    @property
    def labelled(self) -> bool:
        """False for a label-free site (``"labels": "none"``): it takes part in label-free work only."""
        return self.label_map != "none" or any(c.label_map != "none" for c in self.cases)

    @property
    def regions(self) -> tuple[bool, ...]:
        return annotated_regions(self.label_map)

    @property
    def region_names(self) -> tuple[str, ...]:
        """The output regions this site's labelling protocol annotates (a pooled site: every site's)."""
        names = [r for c in self.cases for r in protocol_regions(c.label_map)] or list(protocol_regions(self.label_map))
        return tuple(dict.fromkeys(names))

    def split(self, val_fraction: float = 0.25, seed: int = 0) -> Site:
        """Deterministic train/validation split of the cases (by seed and site name). Cases whose split is fixed
        (a held-out validation set) go where they say; the others are split as if the fixed ones were absent,
        so adding held-out cases to a site leaves its training cases as they were."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        fixed = {k: sorted((c for c in self.cases if c.split == k), key=lambda c: c.case_id) for k in SPLITS}
        cases = sorted((c for c in self.cases if c.split is None), key=lambda c: c.case_id)
        random.Random(f"{seed}-{self.name}").shuffle(cases)
        n_val = max(1, round(len(cases) * val_fraction)) if len(cases) > 1 else 0
        self.val, self.train = cases[:n_val] + fixed["val"], cases[n_val:] + fixed["train"]
        return self


@dataclass
class Federation:
    kind: str
    root: str
    sites: list[Site]

    def site(self, key) -> Site:
        for s in self.sites:
            if s.name == str(key):
                return s
        raise KeyError(f"no site {key!r} in {self.root} (sites: {[s.name for s in self.sites]})")

    def pooled(self) -> Site:
        """Every site's train/val cases as one site (the centralized baseline); each case keeps its
        label protocol and its site's domain. Label-free sites have nothing to add to a segmentation model."""
        sites = [s for s in self.sites if s.labelled]
        mods = tuple(dict.fromkeys(m for s in sites for m in s.modalities))
        pooled = Site("pooled", 0, [c for s in sites for c in s.cases], sites[0].label_map, mods)
        pooled.train = [c for s in sites for c in s.train]
        pooled.val = [c for s in sites for c in s.val]
        return pooled


def check_modality_names(names, where) -> tuple[str, ...]:
    """Modality names are lower-case letters and digits (they become file-name parts and model inputs)."""
    names = tuple(names) if isinstance(names, (list, tuple)) else (names,)
    bad = [m for m in names if not isinstance(m, str) or not MODALITY_NAME.fullmatch(m)]
    if bad or not names or len(set(names)) != len(names):
        raise DataError(
            where,
            f"modalities must be distinct, non-empty names of lower-case letters and digits "
            f"(the BraTS ones are {list(MODALITIES)}), got {list(names)}",
        )
    return names


def protocol_label_map(labels: str, where) -> str:
    """A site's declared ``labels``: ``full`` (BraTS 2021), ``wt`` or any protocol name of ``LABEL_MAPS``."""
    label_map = {"full": "brats2021"}.get(labels, labels) if isinstance(labels, str) else labels
    if label_map not in LABEL_MAPS:
        raise DataError(
            where, f"unknown labelling protocol {labels!r}; expected full, wt or one of {sorted(LABEL_MAPS)}"
        )
    return label_map


def brats_case(root: Path, subject: str, label_map: str, modalities, suffix=None, domain: int = 0) -> Case:
    """BraTS 2021 naming (``<subject>_<m>.nii.gz``) or, with ``suffix``, BraTS 2023 naming
    (``<subject>-<suffix[m]>.nii.gz``); a modality outside the four BraTS ones keeps its own name."""
    folder = Path(root) / subject
    if suffix is None:
        images = {m: str(folder / f"{subject}_{m}.nii.gz") for m in modalities}
        seg = folder / f"{subject}_seg.nii.gz"
    else:
        images = {m: str(folder / f"{subject}-{suffix.get(m, m)}.nii.gz") for m in modalities}
        seg = folder / f"{subject}-seg.nii.gz"
    label = None if label_map == "none" else str(seg)  # a label-free site's folders hold scans only
    return Case(subject, images, label, label_map, tuple(modalities), domain=domain)


def load_site_folder(
    path, site_id: str, domain: int = 0, label_map: str = "brats2021", val_fraction: float = 0.25, seed: int = 0
) -> Site:
    """One hospital's data folder (deployment): case folders in BraTS 2021 naming
    (``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``) or BraTS 2023 naming (``-t1n`` ... ``-seg``).

    An optional ``types.csv`` gives cases their tumour types (``uharmony.data.case_types``).
    An optional ``site.json`` declares ``{"modalities": [...], "labels": "full" | "wt" | "none" | PROTOCOL}``
    for sites that do not acquire every modality, acquire others (e.g. ``"adc"``, read from
    ``<case>_adc.nii.gz``), annotate whole tumour only, annotate nothing (``"none"``: scans only; the site
    takes part in label-free pretraining, ``uharmony.umsrep``) or follow another protocol (``"brats2024"``:
    post-operative labels with the resection cavity).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "site data folder does not exist")
    if not site_id:
        raise ValueError("site-id must be a non-empty string")
    meta = {}
    try:
        meta = json.loads(read_small(root / "site.json", 64 << 10))
    except FileNotFoundError:
        pass  # no site.json: every BraTS modality, full labels
    except ValueError as exc:  # a folder, FIFO or socket in its place, too large, not UTF-8, not JSON
        raise DataError(root / "site.json", f"invalid ({str(exc)[:300]})") from exc
    if not isinstance(meta, dict):
        raise DataError(root / "site.json", "expected a JSON object")
    modalities = check_modality_names(meta.get("modalities", MODALITIES), root / "site.json")
    labels = meta.get("labels", "full")
    if labels != "full":
        label_map = protocol_label_map(labels, root / "site.json")
    site = Site(str(site_id), domain, [], label_map, modalities)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / f"{folder.name}_seg.nii.gz").exists() or (folder / f"{folder.name}_flair.nii.gz").exists():
            site.cases.append(brats_case(root, folder.name, label_map, modalities, domain=domain))
        elif (folder / f"{folder.name}-seg.nii.gz").exists() or (folder / f"{folder.name}-t2f.nii.gz").exists():
            lm = "brats2023" if label_map == "brats2021" else label_map  # BraTS 2023 naming: its labels too
            site.cases.append(brats_case(root, folder.name, lm, modalities, BRATS23_SUFFIX, domain))
        else:
            site.skipped.append(
                {"case": folder.name, "reason": f"{folder}: no BraTS-named image files", "category": "no-images"}
            )
    if not site.cases:
        raise DataError(root, "no case folders with BraTS-named files found")
    return attach_types(site, root).split(val_fraction, seed)


def case_from_folder(folder: Path, modalities=MODALITIES) -> Case:
    """The files of ``modalities`` (the model's) that a case folder has, in BraTS 2021 or 2023 naming; other
    files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a case folder")
    images = {}
    for m in modalities:
        for name in (f"{folder.name}_{m}.nii.gz", f"{folder.name}-{BRATS23_SUFFIX.get(m, m)}.nii.gz"):
            if (folder / name).exists():
                images[m] = str(folder / name)
    if not images:
        raise DataError(
            folder,
            f"no modality file named <case>_{{{','.join(modalities)}}}.nii.gz (or BraTS 2023 names) "
            "for the model's modalities",
        )
    return Case(folder.name, images, None, "brats2021", tuple(images))

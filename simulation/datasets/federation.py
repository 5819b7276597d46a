"""FLamby-like per-site API over public datasets partitioned by institution and the synthetic federation.

    fed = load_federation(root, kind, partition=None)
    fed.sites[i].train / .val   # lists of Case
    fed.pooled()                # one Site with every case (centralized baseline)

Kinds: ``synthetic`` (our generator), ``brats2021`` (BraTS 2021 training layout + FeTS partition CSV),
``brats2023`` (sub-challenges GLI/MEN/MET/PED/SSA as domains), ``msd`` (MSD Task01_BrainTumour).
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .regions import LABEL_MAPS, annotated_regions, protocol_regions

MODALITIES = ("t1", "t1ce", "t2", "flair")  # the BraTS four; sites may add others (e.g. "adc")
MODALITY_NAME = re.compile(r"[a-z][a-z0-9]*")
KINDS = ("synthetic", "brats2021", "brats2023", "msd")
BRATS23_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
BRATS23_CHALLENGES = ("GLI", "MEN", "MET", "PED", "SSA")
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")  # order of the 4-D MSD images (FLAIR, T1w, t1gd, T2w)


class DataError(ValueError):
    """A problem with one input file or table; the message names the file."""

    def __init__(self, path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class Case:
    case_id: str
    images: dict[str, str]  # modality -> file ('' for a 4-D file holding all, see channels)
    label: str | None
    label_map: str
    modalities: tuple[str, ...]  # modalities this case is expected to have
    image4d: str | None = None  # MSD: one 4-D file, channels in MSD_CHANNELS order


@dataclass
class Site:
    name: str
    domain: int
    cases: list[Case]
    label_map: str
    modalities: tuple[str, ...]
    train: list[Case] = field(default_factory=list)
    val: list[Case] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"case"/"file", "reason"}

    @property
    def regions(self) -> tuple[bool, ...]:
        return annotated_regions(self.label_map)

    @property
    def region_names(self) -> tuple[str, ...]:
        """The output regions this site's labelling protocol annotates."""
        return protocol_regions(self.label_map)


@dataclass
class Federation:
    kind: str
    root: str
    sites: list[Site]
    partition: str | None = None

    def site(self, key) -> Site:
        for s in self.sites:
            if s.name == str(key):
                return s
        raise KeyError(f"no site {key!r} in {self.root} (sites: {[s.name for s in self.sites]})")

    def pooled(self) -> Site:
        """All sites' train/val cases as one site (the centralized baseline); keeps per-case label maps."""
        mods = tuple(dict.fromkeys(m for s in self.sites for m in s.modalities))
        pooled = Site("pooled", 0, [c for s in self.sites for c in s.cases], self.sites[0].label_map, mods)
        pooled.train = [c for s in self.sites for c in s.train]
        pooled.val = [c for s in self.sites for c in s.val]
        return pooled


def _split(site: Site, val_fraction: float, seed: int) -> None:
    cases = sorted(site.cases, key=lambda c: c.case_id)
    random.Random(f"{seed}-{site.name}").shuffle(cases)
    n_val = max(1, round(len(cases) * val_fraction)) if len(cases) > 1 else 0
    site.val, site.train = cases[:n_val], cases[n_val:]


def _read_partition(csv_path: Path) -> list[tuple[str, str]]:
    if not csv_path.is_file():
        raise DataError(csv_path, "partition CSV not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"Partition_ID", "Subject_ID"} <= set(reader.fieldnames):
            raise DataError(csv_path, f"expected columns Partition_ID,Subject_ID, got {reader.fieldnames}")
        rows = [(r["Partition_ID"].strip(), r["Subject_ID"].strip()) for r in reader]
    if not rows:
        raise DataError(csv_path, "partition CSV lists no subjects")
    return rows


def _brats_case(root: Path, subject: str, label_map: str, modalities, suffix=None) -> Case:
    """BraTS 2021 naming (``<subject>_<m>.nii.gz``) or, with ``suffix``, BraTS 2023 naming
    (``<subject>-<suffix[m]>.nii.gz``); a modality outside the four BraTS ones keeps its own name."""
    folder = root / subject
    if suffix is None:
        images = {m: str(folder / f"{subject}_{m}.nii.gz") for m in modalities}
        seg = folder / f"{subject}_seg.nii.gz"
    else:
        images = {m: str(folder / f"{subject}-{suffix.get(m, m)}.nii.gz") for m in modalities}
        seg = folder / f"{subject}-seg.nii.gz"
    return Case(subject, images, str(seg), label_map, tuple(modalities))


def check_modality_names(names, where) -> tuple[str, ...]:
    """Modality names are lower-case letters and digits (they become file-name parts and model inputs)."""
    names = tuple(names)
    bad = [m for m in names if not isinstance(m, str) or not MODALITY_NAME.fullmatch(m)]
    if bad or not names or len(set(names)) != len(names):
        raise DataError(where, f"modalities must be distinct, non-empty names of lower-case letters and digits "
                               f"(the BraTS ones are {list(MODALITIES)}), got {list(names)}")
    return names


def protocol_label_map(labels: str, where) -> str:
    """A site's declared ``labels``: ``full`` (BraTS 2021), ``wt`` or any protocol name of ``LABEL_MAPS``."""
    label_map = {"full": "brats2021"}.get(labels, labels)
    if label_map not in LABEL_MAPS:
        raise DataError(where, f"unknown labelling protocol {labels!r}; expected full, wt or one of {sorted(LABEL_MAPS)}")
    return label_map


def _partitioned(root: Path, csv_path: Path, label_map_of, modalities_of, strict: bool) -> list[Site]:
    sites: dict[str, Site] = {}
    for pid, subject in _read_partition(csv_path):
        if pid not in sites:
            sites[pid] = Site(pid, len(sites), [], label_map_of(pid), tuple(modalities_of(pid)))
        site = sites[pid]
        if not (root / subject).is_dir():
            err = DataError(csv_path, f"names subject {subject!r} but {root / subject} does not exist")
            if strict:
                raise err
            site.skipped.append({"case": subject, "reason": str(err)})
            continue
        site.cases.append(_brats_case(root, subject, site.label_map, site.modalities))
    return list(sites.values())


def load_federation(root, kind: str, partition: str | None = None, val_fraction: float = 0.25,
                    seed: int = 0, strict: bool = False) -> Federation:
    """Discover a federation's sites and cases (no image is read here; see ``pipeline``).

    ``partition``: for ``brats2021`` the FeTS CSV (path or name under ``root``; default
    ``partitioning_1.csv``); for ``synthetic`` defaults to ``partitioning.csv``. In federation mode
    (``strict`` off, the default)
    subjects the CSV names but the tree lacks are skipped and recorded in ``site.skipped``.
    """
    root = Path(root)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if not root.is_dir():
        raise DataError(root, "dataset root does not exist or is not a folder")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if kind == "synthetic":
        meta_path = root / "federation.json"
        if not meta_path.is_file():
            raise DataError(meta_path, "synthetic federation description not found (run `uharmony-data synth`)")
        meta = json.loads(meta_path.read_text())["sites"]
        csv_path = Path(partition) if partition and Path(partition).is_absolute() else root / (partition or "partitioning.csv")

        def prof(pid):
            if pid not in meta:
                raise DataError(csv_path, f"partition {pid!r} has no profile in {meta_path}")
            return meta[pid]

        sites = _partitioned(root, csv_path, lambda p: protocol_label_map(prof(p)["labels"], meta_path),
                             lambda p: check_modality_names(prof(p)["modalities"], meta_path), strict)
    elif kind == "brats2021":
        csv_path = Path(partition) if partition and Path(partition).is_absolute() else root / (partition or "partitioning_1.csv")
        sites = _partitioned(root, csv_path, lambda p: "brats2021", lambda p: MODALITIES, strict)
    elif kind == "brats2023":
        sites = _brats2023_sites(root)
    else:
        sites = _msd_sites(root)
    sites = [s for s in sites if s.cases or s.skipped]
    if not any(s.cases for s in sites):
        raise DataError(root, f"no {kind} cases found")
    for site in sites:
        _split(site, val_fraction, seed)
    return Federation(kind, str(root), sites, partition)


def _brats2023_sites(root: Path) -> list[Site]:
    """Every ``BraTS-<CH>-xxxxx-xxx`` folder below ``root`` (any depth 1-2); domain = sub-challenge."""
    by_ch: dict[str, Site] = {}
    folders = sorted({p for p in list(root.glob("BraTS-*")) + list(root.glob("*/BraTS-*")) if p.is_dir()})
    for folder in folders:
        parts = folder.name.split("-")
        if len(parts) < 3 or parts[1] not in BRATS23_CHALLENGES:
            continue
        ch = parts[1]
        site = by_ch.setdefault(ch, Site(ch, 0, [], "brats2023", MODALITIES))
        case = _brats_case(folder.parent, folder.name, "brats2023", MODALITIES, BRATS23_SUFFIX)
        site.cases.append(case)
    sites = [by_ch[c] for c in BRATS23_CHALLENGES if c in by_ch]
    for i, s in enumerate(sites):
        s.domain = i
    return sites


def _msd_sites(root: Path) -> list[Site]:
    """MSD Task01_BrainTumour: one site (MSD records no institution); 4-D images from dataset.json."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(meta_path, "MSD dataset.json not found")
    try:
        meta = json.loads(meta_path.read_text())
        entries = meta["training"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise DataError(meta_path, f"not a valid MSD dataset.json ({exc})") from exc
    site = Site("msd", 0, [], "msd", MODALITIES)
    for e in entries:
        image, label = root / e["image"], root / e["label"]
        site.cases.append(Case(Path(e["image"]).name.split(".")[0], {}, str(label), "msd", MODALITIES, str(image)))
    return [site]


def load_site_folder(path, site_id: str, domain: int = 0, label_map: str = "brats2021",
                     val_fraction: float = 0.25, seed: int = 0) -> Site:
    """One hospital's data folder (deployment): case folders in BraTS 2021 naming
    (``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``) or BraTS 2023 naming (``-t1n`` ... ``-seg``).

    An optional ``site.json`` declares ``{"modalities": [...], "labels": "full" | "wt" | PROTOCOL}`` for
    sites that do not acquire every modality, acquire others (e.g. ``"adc"``, read from
    ``<case>_adc.nii.gz``), annotate whole tumour only or follow another protocol (``"brats2024"``: post-
    operative labels with the resection cavity).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(root, "site data folder does not exist")
    if not site_id:
        raise ValueError("site-id must be a non-empty string")
    meta = {}
    if (root / "site.json").is_file():
        try:
            meta = json.loads((root / "site.json").read_text())
        except json.JSONDecodeError as exc:
            raise DataError(root / "site.json", f"invalid JSON ({exc})") from exc
    modalities = check_modality_names(meta.get("modalities", MODALITIES), root / "site.json")
    labels = meta.get("labels", "full")
    if labels != "full":
        label_map = protocol_label_map(labels, root / "site.json")
    site = Site(str(site_id), domain, [], label_map, modalities)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / f"{folder.name}_seg.nii.gz").exists() or (folder / f"{folder.name}_flair.nii.gz").exists():
            site.cases.append(_brats_case(root, folder.name, label_map, modalities))
        elif (folder / f"{folder.name}-seg.nii.gz").exists() or (folder / f"{folder.name}-t2f.nii.gz").exists():
            lm = "brats2023" if label_map == "brats2021" else label_map  # BraTS 2023 naming: its labels too
            site.cases.append(_brats_case(root, folder.name, lm, modalities, BRATS23_SUFFIX))
        else:
            site.skipped.append({"case": folder.name, "reason": f"{folder}: no BraTS-named image files"})
    if not site.cases:
        raise DataError(root, "no case folders with BraTS-named files found")
    _split(site, val_fraction, seed)
    return site

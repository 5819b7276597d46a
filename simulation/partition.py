"""Partition a public dataset by institution into a federation manifest (``uharmony.data.manifest``).

    uharmony-data partition brats2021 --root /data/BraTS2021 --csv partitioning_1.csv --out fed/brats2021-p1
    uharmony-data partition brats2023 --root /data/BraTS2023 --out fed/brats2023
    uharmony-data partition msd --root /data/Task01_BrainTumour --out fed/msd

Kinds:
- ``brats2021``: BraTS 2021 training layout (``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``)
  partitioned by a FeTS CSV (``Partition_ID,Subject_ID``): ``partitioning_1.csv`` (23 institutions) or
  ``partitioning_2.csv`` (33 partitions). The CSV's ``Subject_ID`` is a folder name under ``--root``. A subject
  the CSV names but the tree lacks is skipped, recorded and printed (``--strict``: an error).
- ``fets2022``: the FeTS 2022 training data (``FeTS2022_XXXXX/FeTS2022_XXXXX_{t1,...,seg}.nii.gz``, BraTS 2021
  labels) with the ``partitioning_1.csv`` / ``partitioning_2.csv`` that come with it, whose subjects are
  ``FeTS2022_XXXXX``: the same layout as ``brats2021``, under its own name. A FeTS 2022 CSV names no
  ``BraTS2021_XXXXX`` folder: pair each CSV with the tree it was made for.
- ``brats2023``: every ``BraTS-<CH>-xxxxx-xxx`` folder (depth 1-2); one site and domain per
  sub-challenge (GLI, MEN, MET, PED, SSA).
- ``msd``: MSD Task01_BrainTumour (``dataset.json``, 4-D ``imagesTr``): one site (MSD records no institution).

``--csv`` is a file path (absolute, or relative to the current folder); a bare name that is not there is looked
up under ``--root`` (default: ``ROOT/partitioning_1.csv``). Relative ``--root`` and ``--out`` are taken from the
current folder.

No image is read: the manifest lists files; each site checks its cases when it reads them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from uharmony.data import MODALITIES, DataError
from uharmony.data.cases import BRATS23_SUFFIX, MSD_CHANNELS
from uharmony.data.manifest import absolute, load_federation, write_manifest

KINDS = ("brats2021", "fets2022", "brats2023", "msd")
FETS_LAYOUT = ("brats2021", "fets2022")  # <subject>/<subject>_<m>.nii.gz, partitioned by a FeTS CSV
BRATS23_CHALLENGES = ("GLI", "MEN", "MET", "PED", "SSA")


def _case(root: Path, subject: str, suffix: dict | None = None) -> dict:
    folder = root / subject
    if suffix is None:
        return {
            "id": folder.name,
            "images": {m: str(folder / f"{folder.name}_{m}.nii.gz") for m in MODALITIES},
            "label": str(folder / f"{folder.name}_seg.nii.gz"),
        }
    return {
        "id": folder.name,
        "images": {m: str(folder / f"{folder.name}-{suffix[m]}.nii.gz") for m in MODALITIES},
        "label": str(folder / f"{folder.name}-seg.nii.gz"),
    }


def _site(name: str, domain: int, labels: str, cases: list[dict], skipped: list[dict] | None = None) -> dict:
    return {
        "name": name,
        "domain": domain,
        "labels": labels,
        "modalities": list(MODALITIES),
        "cases": cases,
        "skipped": skipped or [],
    }


def read_partition_csv(csv_path: Path) -> list[tuple[str, str]]:
    if not csv_path.is_file():
        raise DataError(csv_path, "partition CSV not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"Partition_ID", "Subject_ID"} <= set(reader.fieldnames):
            raise DataError(csv_path, f"expected columns Partition_ID,Subject_ID, got {reader.fieldnames}")
        rows = [((r["Partition_ID"] or "").strip(), (r["Subject_ID"] or "").strip()) for r in reader]
    rows = [r for r in rows if r[0] and r[1]]
    if not rows:
        raise DataError(csv_path, "partition CSV lists no subjects")
    return rows


def partition_csv(root: Path, csv_name: str | Path | None) -> Path:
    """The partition CSV: ``csv_name`` as a path from the current folder if it is there, else under ``root``
    (default ``root/partitioning_1.csv``)."""
    if csv_name is None:
        return root / "partitioning_1.csv"
    given = absolute(csv_name)
    if given.is_file() or Path(csv_name).is_absolute():
        return given
    under = root / csv_name
    if under.is_file():
        return under
    raise DataError(csv_name, f"partition CSV not found (looked for {given} and {under})")


def brats2021_sites(root: Path, csv_name: str | Path | None = None, strict: bool = False) -> list[dict]:
    csv_path = partition_csv(root, csv_name)
    rows = read_partition_csv(csv_path)
    sites: dict[str, dict] = {}
    for pid, subject in rows:
        site = sites.setdefault(pid, _site(pid, len(sites), "brats2021", []))
        if not (root / subject).is_dir():
            err = DataError(csv_path, f"names subject {subject!r} but {root / subject} does not exist")
            if strict:
                raise err
            site["skipped"].append({"case": subject, "reason": str(err)})
            continue
        site["cases"].append(_case(root, subject))
    if not any(s["cases"] for s in sites.values()):
        present = sorted(p.name for p in root.iterdir() if p.is_dir())[:3]
        raise DataError(
            csv_path,
            f"none of the {len(rows)} subjects it names (e.g. {rows[0][1]!r}) is a folder under {root}"
            + (f", whose folders are named like {present}" if present else ", which holds no folder")
            + "; pair the CSV with the data it was made for (a FeTS 2022 CSV names FeTS2022_XXXXX folders)",
        )
    return list(sites.values())


def brats2023_sites(root: Path) -> list[dict]:
    by_ch: dict[str, list[dict]] = {}
    for folder in sorted({p for p in list(root.glob("BraTS-*")) + list(root.glob("*/BraTS-*")) if p.is_dir()}):
        parts = folder.name.split("-")
        if len(parts) >= 3 and parts[1] in BRATS23_CHALLENGES:
            by_ch.setdefault(parts[1], []).append(_case(folder.parent, folder.name, BRATS23_SUFFIX))
    present = [ch for ch in BRATS23_CHALLENGES if ch in by_ch]
    return [_site(ch, i, "brats2023", by_ch[ch]) for i, ch in enumerate(present)]


def msd_sites(root: Path) -> list[dict]:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(meta_path, "MSD dataset.json not found")
    try:
        entries = json.loads(meta_path.read_text())["training"]
        cases = [
            {
                "id": Path(e["image"]).name.split(".")[0],
                "image4d": str(root / e["image"]),
                "channels": list(MSD_CHANNELS),
                "label": str(root / e["label"]),
            }
            for e in entries
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(meta_path, f"not a valid MSD dataset.json ({exc})") from None
    return [_site("msd", 0, "msd", cases)]


def partition(
    kind: str, root: str | Path, out: str | Path, csv_name: str | Path | None = None, strict: bool = False
) -> Path:
    """Write ``out/federation.json`` for a public dataset at ``root``; returns the manifest's path."""
    root = absolute(root)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    if not root.is_dir():
        raise DataError(root, "dataset root does not exist or is not a folder")
    csv_path = None
    if kind in FETS_LAYOUT:
        csv_path = partition_csv(root, csv_name)
        sites = brats2021_sites(root, csv_path, strict)
    elif kind == "brats2023":
        sites = brats2023_sites(root)
    else:
        sites = msd_sites(root)
    sites = [s for s in sites if s["cases"] or s["skipped"]]
    if not any(s["cases"] for s in sites):
        raise DataError(root, f"no {kind} cases found")
    source = {"root": str(root), "partition": csv_name if csv_path is None else str(csv_path)}
    return write_manifest(absolute(out), kind, sites, source=source)


def summary(manifest: str | Path) -> str:
    """What a partition made, for its user: sites with their case counts, then every skipped subject and why."""
    fed = load_federation(Path(manifest).parent)
    csv_path = json.loads(Path(manifest).read_text()).get("source", {}).get("partition")
    cases = sum(len(s.cases) for s in fed.sites)
    lines = [
        f"{fed.root}: {_n(len(fed.sites), 'site')}, {_n(cases, 'case')} ({fed.kind}"
        + (f", {csv_path})" if csv_path else ")")
    ]
    lines += [
        f"  site {s.name}: {_n(len(s.cases), 'case')}" + (f", {len(s.skipped)} skipped" if s.skipped else "")
        for s in fed.sites
    ]
    skipped = [(s.name, x) for s in fed.sites for x in s.skipped]
    if skipped:
        lines.append(f"skipped {_n(len(skipped), 'subject')} (recorded in federation.json; --strict: an error):")
        lines += [f"  {x.get('case', '?')} (site {name}): {x.get('reason', '')}" for name, x in skipped]
    return "\n".join(lines)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"

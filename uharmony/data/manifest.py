"""A simulated federation on disk: ``federation.json`` lists the sites and each site's cases.

The simulation package writes it (the synthetic generator; partitioning a public dataset by
institution); every simulated site reads its own part from it here, as a hospital reads its folder::

    {"format": "uharmony-federation/1", "kind": "brats2021", "root": "/data/BraTS2021",
     "sites": [{"name": "1", "domain": 0, "labels": "brats2021", "modalities": ["t1", "t1ce", "t2", "flair"],
                "cases": [{"id": "BraTS2021_00000", "images": {"t1": "BraTS2021_00000/..._t1.nii.gz", ...},
                           "label": "BraTS2021_00000/..._seg.nii.gz"}],
                "skipped": [{"case": "BraTS2021_99999", "reason": "..."}]}]}

A case may carry ``"reference": {modality: path}`` (a noise-free copy the generator writes with
``synth-reference``, or a high-SNR acquisition): denoising is then scored against it. A case may carry
``"split": "val"`` (or ``"train"``): it is then always in that part (a held-out validation set); the
other cases are split by seed as if it were absent. A case may carry ``"type"``, its tumour type
(``uharmony.data.case_types``: the scan-level label of UMS-Rep's second task). Relative paths are relative to
``root`` (default: the manifest's folder). A relative folder given to this module is made absolute once, against
the current folder, where it enters (``absolute``). A 4-D case gives ``image4d`` and ``channels`` instead of
``images``.
Every malformed entry is an error naming the file and the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from uharmony.data.case_types import check_type
from uharmony.data.cases import (
    MSD_CHANNELS,
    SPLITS,
    Case,
    DataError,
    Federation,
    Site,
    check_modality_names,
    protocol_label_map,
)
from uharmony.files import atomic_write

FORMAT = "uharmony-federation/1"
MANIFEST = "federation.json"


def absolute(path: str | Path) -> Path:
    """``path`` made absolute against the current folder (``~`` expanded; links are not resolved)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def write_manifest(folder: str | Path, kind: str, sites: list[dict], root: str | Path | None = None, **extra) -> Path:
    """Write ``folder/federation.json`` (checked by reading it back); returns its path."""
    doc = {"format": FORMAT, "kind": kind, **({"root": str(root)} if root is not None else {}), **extra, "sites": sites}
    path = atomic_write(Path(folder) / MANIFEST, json.dumps(doc, indent=1))
    load_federation(folder)
    return path


def _need(cond: bool, where: str, key: str, what: str) -> None:
    if not cond:
        raise DataError(where, f"{key}: {what}")


def _case(entry, base: Path, site: Site, where: str, key: str) -> Case:
    _need(
        isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"],
        where,
        key,
        "a case is an object with a non-empty 'id'",
    )
    label = entry.get("label")
    _need(label is None or isinstance(label, str), where, f"{key}.label", "must be a path or null")
    split = entry.get("split")
    _need(split is None or split in SPLITS, where, f"{key}.split", f"must be one of {list(SPLITS)} or absent")
    tumour_type = None if entry.get("type") is None else check_type(entry["type"], where, f"{key}.type")
    label = str(base / label) if label else None
    _need(not ("image4d" in entry and "reference" in entry), where, f"{key}.reference", "not for a 4-D case")
    if "image4d" in entry:
        channels = check_modality_names(entry.get("channels", MSD_CHANNELS), f"{where} ({key}.channels)")
        return Case(
            entry["id"],
            {},
            label,
            site.label_map,
            site.modalities,
            str(base / entry["image4d"]),
            channels,
            domain=site.domain,
            split=split,
            tumour_type=tumour_type,
        )
    images = entry.get("images")
    _need(
        isinstance(images, dict) and images and all(isinstance(v, str) for v in images.values()),
        where,
        f"{key}.images",
        "must map modality names to paths",
    )
    unknown = sorted(set(images) - set(site.modalities))
    _need(not unknown, where, f"{key}.images", f"modalities {unknown} are not among the site's {list(site.modalities)}")
    reference = entry.get("reference")
    _need(
        reference is None
        or (
            isinstance(reference, dict)
            and all(isinstance(v, str) for v in reference.values())
            and set(reference) <= set(images)
        ),  # fmt: skip
        where,
        f"{key}.reference",
        "must map some of the case's image modalities to paths (a noise-free or high-SNR copy), or be absent",
    )
    return Case(
        entry["id"],
        {m: str(base / p) for m, p in images.items()},
        label,
        site.label_map,
        site.modalities,
        domain=site.domain,
        split=split,
        reference={m: str(base / p) for m, p in reference.items()} if reference else None,
        tumour_type=tumour_type,
    )


def _site(entry, base: Path, where: str, key: str) -> Site:
    _need(isinstance(entry, dict), where, key, "a site is an object")
    name, domain = entry.get("name"), entry.get("domain")
    _need(isinstance(name, str) and name.strip() != "", where, f"{key}.name", "must be a non-empty string")
    _need(
        isinstance(domain, int) and not isinstance(domain, bool) and domain >= 0,
        where,
        f"{key}.domain",
        "must be a non-negative int",
    )
    label_map = protocol_label_map(entry.get("labels", "full"), f"{where} ({key}.labels)")
    modalities = check_modality_names(entry.get("modalities", ()), f"{where} ({key}.modalities)")
    site = Site(name, domain, [], label_map, modalities)
    cases = entry.get("cases", [])
    _need(isinstance(cases, list), where, f"{key}.cases", "must be a list")
    site.cases = [_case(c, base, site, where, f"{key}.cases[{i}]") for i, c in enumerate(cases)]
    skipped = entry.get("skipped", [])
    _need(
        isinstance(skipped, list) and all(isinstance(s, dict) for s in skipped),
        where,
        f"{key}.skipped",
        "must be a list of objects",
    )
    site.skipped = [dict(s) for s in skipped]
    return site


def load_federation(root: str | Path, val_fraction: float = 0.25, seed: int = 0) -> Federation:
    """The sites of the federation whose manifest is ``root/federation.json`` (split into train/val by seed).
    A relative ``root`` is taken from the current folder (made absolute here, once)."""
    root = absolute(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(
            path, "no federation manifest here (make one with `uharmony-data synth` or `uharmony-data partition`)"
        )
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc})") from None
    _need(isinstance(doc, dict) and doc.get("format") == FORMAT, str(path), "format", f"expected {FORMAT!r}")
    base = Path(doc["root"]) if isinstance(doc.get("root"), str) else root  # relative: to the manifest's folder
    base = base if base.is_absolute() else (root / base)
    entries = doc.get("sites")
    _need(isinstance(entries, list) and entries, str(path), "sites", "must be a non-empty list")
    sites = [_site(e, base, str(path), f"sites[{i}]") for i, e in enumerate(entries)]
    names = [s.name for s in sites]
    _need(len(set(names)) == len(names), str(path), "sites", f"site names must be distinct, got {names}")
    if not any(s.cases for s in sites):
        raise DataError(path, "no site has a case")
    return Federation(str(doc.get("kind", "")), str(root), [s.split(val_fraction, seed) for s in sites])


def cache_root() -> Path:
    """Where generated federations and preprocessed scans are kept (``UHARMONY_CACHE``)."""
    return absolute(os.environ.get("UHARMONY_CACHE", Path.home() / ".cache" / "uharmony"))


def embedded_name(
    sites: int,
    cases_per_site: int,
    seed: int,
    spacing: float,
    join_sites: int = 0,
    scenario: str = "",
    kappa: float = 1.0,
    val_cases: int = 0,
    reference: bool = False,
) -> str:
    held = f"+v{val_cases}" if val_cases else ""  # held-out validation cases per site
    held += "+ref" if reference else ""  # noise-free copies beside the scans
    if scenario:  # a benchmark scenario fixes its own sites
        strength = f"-k{kappa:g}" if scenario in ("S2", "S3") else ""
        return f"scenario-{scenario}{strength}-x{cases_per_site}{held}-seed{seed}-{spacing:g}mm"
    join = f"-join{join_sites}" if join_sites else ""
    return f"synthetic-{sites}x{cases_per_site}{held}{join}-seed{seed}-{spacing:g}mm"


def federation_root(cfg) -> Path:
    """The run's federation: ``data-root`` (absolute; a relative one from the current folder), else the embedded
    synthetic federation of its settings."""
    if cfg.data_root:
        return absolute(cfg.data_root)
    path = cache_root() / embedded_name(
        cfg.synth_sites,
        cfg.synth_cases_per_site,
        cfg.federation_seed,
        cfg.synth_spacing,
        cfg.synth_join_sites,
        cfg.synth_scenario,
        cfg.synth_kappa,
        cfg.synth_val_cases,
        cfg.synth_reference,
    )
    if not (path / MANIFEST).is_file():
        keys = (
            "seed",
            "synth-sites",
            "synth-cases-per-site",
            "synth-spacing",
            "synth-join-sites",
            "synth-scenario",
            "synth-kappa",
            "synth-val-cases",
            "synth-reference",
        )
        settings = " ".join(f"{k}={getattr(cfg, k.replace('-', '_'))!r}" for k in keys).replace("'", "")
        raise DataError(
            path,
            "the embedded federation for these settings is not generated yet: run "
            f'`uharmony-data embedded --run-config "{settings}"` (scripts/main.sh does it for you)',
        )
    return path

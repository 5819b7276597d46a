"""Per-site figures of a federation on disk: intensity per contrast and lesion volume (mL)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from .profiles import MODALITIES


def site_stats(root: str | Path) -> list[dict]:
    root = Path(root)
    by_site: dict[str, list[str]] = {}
    with open(root / "partitioning.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_site.setdefault(row["Partition_ID"], []).append(row["Subject_ID"])
    desc = json.loads((root / "federation.json").read_text())["sites"] if (root / "federation.json").exists() else {}
    rows = []
    for site, cases in by_site.items():
        mods = list(MODALITIES) + [m for m in desc.get(site, {}).get("modalities", ()) if m not in MODALITIES]
        means = {m: [] for m in mods}
        volumes = []
        for case in cases:
            seg_img = nib.load(root / case / f"{case}_seg.nii.gz")
            seg = np.asarray(seg_img.dataobj)
            voxel_ml = float(np.prod(seg_img.header.get_zooms()[:3])) / 1000.0
            volumes.append(float((seg > 0).sum()) * voxel_ml)
            for m in mods:
                path = root / case / f"{case}_{m}.nii.gz"
                if path.exists():
                    data = np.asarray(nib.load(path).dataobj)
                    means[m].append(float(data[data > 0].mean()))
        rows.append({"site": site, "cases": len(cases),
                     "mean_intensity": {m: round(float(np.mean(v)), 1) if v else None for m, v in means.items()},
                     "lesion_ml_mean": round(float(np.mean(volumes)), 1),
                     "lesion_ml_range": [round(min(volumes), 1), round(max(volumes), 1)]})
    return rows


def write_stats(root: str | Path) -> Path:
    out = Path(root) / "site_stats.jsonl"
    with open(out, "w") as f:
        for row in site_stats(root):
            f.write(json.dumps(row) + "\n")
    return out

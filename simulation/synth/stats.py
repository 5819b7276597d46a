"""Per-site figures of a federation on disk: intensity per contrast and lesion volume (mL)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from uharmony.data import MODALITIES, load_federation


def site_stats(root: str | Path) -> list[dict]:
    """Per site of a federation manifest: mean brain intensity per contrast and lesion volume."""
    rows = []
    for site in load_federation(root).sites:
        mods = list(MODALITIES) + [m for m in site.modalities if m not in MODALITIES]
        means = {m: [] for m in mods}
        volumes = []
        for case in site.cases:
            seg_img = nib.load(case.label)
            seg = np.asarray(seg_img.dataobj)
            voxel_ml = float(np.prod(seg_img.header.get_zooms()[:3])) / 1000.0
            volumes.append(float((seg > 0).sum()) * voxel_ml)
            for m, path in case.images.items():
                data = np.asarray(nib.load(path).dataobj)
                means[m].append(float(data[data > 0].mean()))
        rows.append(
            {
                "site": site.name,
                "cases": len(site.cases),
                "mean_intensity": {m: round(float(np.mean(v)), 1) if v else None for m, v in means.items()},
                "lesion_ml_mean": round(float(np.mean(volumes)), 1),
                "lesion_ml_range": [round(min(volumes), 1), round(max(volumes), 1)],
            }
        )
    return rows


def write_stats(root: str | Path) -> Path:
    out = Path(root) / "site_stats.jsonl"
    with open(out, "w") as f:
        for row in site_stats(root):
            f.write(json.dumps(row) + "\n")
    return out

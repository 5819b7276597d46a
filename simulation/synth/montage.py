"""PNG montage: one axial slice per site (rows) and contrast (columns), plus the label map."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from .generate import FEDERATION_JSON, PARTITION_CSV  # noqa: E402
from .profiles import MODALITIES  # noqa: E402


def site_montage(root: str | Path, out_png: str | Path) -> Path:
    root = Path(root)
    desc = json.loads((root / FEDERATION_JSON).read_text())
    first_case = {}
    for line in (root / PARTITION_CSV).read_text().splitlines()[1:]:
        pid, case = line.split(",")
        first_case.setdefault(pid, case)
    extra = [m for prof in desc["sites"].values() for m in prof["modalities"] if m not in MODALITIES]
    cols = list(MODALITIES) + list(dict.fromkeys(extra)) + ["seg"]
    fig, axes = plt.subplots(len(first_case), len(cols), figsize=(2.2 * len(cols), 2.2 * len(first_case)), squeeze=False)
    for r, (pid, case) in enumerate(first_case.items()):
        seg = np.asarray(nib.load(root / case / f"{case}_seg.nii.gz").dataobj)
        z = int(np.argmax((seg > 0).sum(axis=(0, 1)))) if seg.any() else seg.shape[2] // 2
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.axis("off")
            path = root / case / f"{case}_{name}.nii.gz"
            if not path.exists():
                ax.set_title(f"{name}: missing", fontsize=8)
                continue
            data = np.asarray(nib.load(path).dataobj)[:, :, z]
            ax.imshow(np.rot90(data), cmap="magma" if name == "seg" else "gray", interpolation="nearest")
            if name == "seg":
                ax.set_title(f"seg ({desc['sites'][pid]['labels']})", fontsize=8)
            else:
                ax.set_title(f"{name} max {data.max():.0f}", fontsize=8)
        prof = desc["sites"][pid]
        axes[r, 0].text(-0.1, 0.5, f"site {pid}\n{prof['lesion']}", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png

"""PNG montage: one axial slice per site (rows) and contrast (columns), plus the label map over FLAIR in fixed
colours per tissue class (``uharmony.records.plots``: a class keeps its colour whatever number a site's protocol
gives it)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from uharmony.data import MODALITIES, load_federation  # noqa: E402
from uharmony.data.manifest import MANIFEST, absolute  # noqa: E402
from uharmony.records.plots import draw_labels, legend_handles  # noqa: E402

from .lesions import TUMOUR_TYPE  # noqa: E402


def _row_label(case, lesion: str) -> str:
    """What the row shows: the case's own tumour type where the site has a mix of them (S4), else its archetype."""
    if case.tumour_type and case.tumour_type != TUMOUR_TYPE.get(lesion, lesion):
        return f"{case.tumour_type}\n({case.case_id})"
    return lesion


def site_montage(root: str | Path, out_png: str | Path) -> Path:
    root = absolute(root)
    sites = load_federation(root).sites
    lesion = {
        e["name"]: e.get("profile", {}).get("lesion", "") for e in json.loads((root / MANIFEST).read_text())["sites"]
    }
    extra = [m for s in sites for m in s.modalities if m not in MODALITIES]
    cols = list(MODALITIES) + list(dict.fromkeys(extra)) + ["seg"]
    fig, axes = plt.subplots(
        len(sites), len(cols), figsize=(2.2 * len(cols), 2.2 * len(sites) + 0.6), squeeze=False, layout="constrained"
    )
    drawn = []
    for r, site in enumerate(sites):
        case = min(site.cases, key=lambda c: c.case_id)
        seg = np.asarray(nib.load(case.label).dataobj)
        z = int(np.argmax((seg > 0).sum(axis=(0, 1)))) if seg.any() else seg.shape[2] // 2
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.axis("off")
            path = case.label if name == "seg" else case.images.get(name)
            if path is None:
                ax.set_title(f"{name}: missing", fontsize=8)
                continue
            data = np.asarray(nib.load(path).dataobj)[:, :, z]
            if name == "seg":
                under = case.images.get("flair") or next(iter(case.images.values()), None)
                image = np.asarray(nib.load(under).dataobj)[:, :, z] if under else None
                drawn += draw_labels(ax, image, data, site.label_map)
                ax.set_title(f"labels ({site.label_map})", fontsize=8)
                continue
            ax.imshow(np.rot90(data), cmap="gray", interpolation="nearest")
            ax.set_title(f"{name} max {data.max():.0f}", fontsize=8)
        axes[r, 0].text(
            -0.1,
            0.5,
            f"site {site.name}\n{_row_label(case, lesion.get(site.name, ''))}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    handles = legend_handles(drawn, with_values=False)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png

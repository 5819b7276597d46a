"""Real anatomy: MNI152 2009 tissue maps shipped in nilearn's wheel (no download), resampled."""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=4)
def tissue_maps(spacing: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Return ({"csf","gm","wm"} probability maps cropped to the brain, affine) at ``spacing`` mm."""
    if not 1.0 <= spacing <= 6.0:
        raise ValueError(f"spacing must be within [1, 6] mm, got {spacing}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        gm_img = datasets.load_mni152_gm_template(resolution=1)
        wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
        mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)
    gm = gm_img.get_fdata(dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0, 1) * mask
    factor = 1.0 / spacing
    maps = {k: np.clip(ndimage.zoom(v, factor, order=1), 0, 1) for k, v in (("csf", csf), ("gm", gm), ("wm", wm))}
    brain = (maps["csf"] + maps["gm"] + maps["wm"]) > 0.3
    idx = np.argwhere(brain)
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3
    maps = {k: np.ascontiguousarray(v[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]) for k, v in maps.items()}
    affine = gm_img.affine.copy()
    affine[:3, :3] = np.diag([spacing] * 3)
    affine[:3, 3] = gm_img.affine[:3, 3] + lo * spacing
    return maps, affine


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 4) -> np.ndarray:
    """Smooth random field in [-1, 1]-ish: coarse Gaussian noise upsampled with cubic splines."""
    noise = rng.standard_normal((coarse,) * len(shape)).astype(np.float32)
    field = ndimage.zoom(noise, [s / coarse for s in shape], order=3)
    field = field[tuple(slice(0, s) for s in shape)]
    return field / (np.abs(field).max() + 1e-6)


def deform(
    maps: dict[str, np.ndarray],
    rng: np.random.Generator,
    magnitude: float = 2.0,
    scale_jitter: float = 0.05,
    brain_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per-subject anatomy: random global scaling (times ``brain_scale``) and a smooth elastic displacement."""
    shape = next(iter(maps.values())).shape
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = [(s - 1) / 2 for s in shape]
    scales = (1.0 + rng.uniform(-scale_jitter, scale_jitter, size=3)) * brain_scale
    coords = [(g - c) / sc + c + magnitude * smooth_field(rng, shape) for g, c, sc in zip(grid, centre, scales)]
    return {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}

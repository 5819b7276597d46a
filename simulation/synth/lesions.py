"""BraTS-like lesions: necrotic/non-enhancing core, enhancing rim and surrounding oedema.

Labels follow BraTS 2021: 1 = necrotic / non-enhancing core (NCR), 2 = oedema (ED), 4 = enhancing (ET),
plus 3 = resection cavity (RC) for post-operative lesions (BraTS 2021 never uses 3; ``generate`` writes
each site's own labelling protocol from these codes).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import smooth_field

NCR, ED, RC, ET = 1, 2, 3, 4
# (radius mm range, necrotic fraction of the core radius, oedema extent as multiple of the radius)
LESION_TYPES = {
    "glioma": dict(count=(1, 1), radius=(14.0, 24.0), necrosis=(0.45, 0.7), oedema=(1.5, 2.0)),
    "metastasis": dict(count=(2, 4), radius=(4.0, 9.0), necrosis=(0.0, 0.4), oedema=(2.0, 3.0)),
    # after resection: a fluid-filled cavity (fraction of the radius), residual nodular enhancement on part
    # of its wall, a little non-enhancing residual tumour and surrounding oedema
    "postop": dict(count=(1, 1), radius=(16.0, 24.0), necrosis=(0.0, 0.25), oedema=(1.4, 1.9), cavity=(0.65, 0.85)),
}


def insert_lesions(tissue: dict[str, np.ndarray], kind: str, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Return a label map (uint8) of lesions placed inside white/grey matter, away from the brain edge."""
    if kind not in LESION_TYPES:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {sorted(LESION_TYPES)}")
    spec = LESION_TYPES[kind]
    shape = tissue["wm"].shape
    brain = (tissue["csf"] + tissue["gm"] + tissue["wm"]) > 0.5
    depth_mm = ndimage.distance_transform_edt(brain) * spacing
    parenchyma = (tissue["wm"] + tissue["gm"]) > 0.5
    seg = np.zeros(shape, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    n = int(rng.integers(spec["count"][0], spec["count"][1] + 1))
    for _ in range(n):
        radius = rng.uniform(*spec["radius"])
        ok = np.argwhere(parenchyma & (depth_mm > radius * 0.9 + 4) & (seg == 0))
        if len(ok) == 0:
            ok = np.argwhere(parenchyma & (seg == 0))
        centre = ok[rng.integers(len(ok))].astype(np.float32)
        axes = radius * rng.uniform(0.75, 1.25, size=3) / spacing
        rel = (grid - centre.reshape(3, 1, 1, 1)) / axes.reshape(3, 1, 1, 1)
        r = np.sqrt((rel**2).sum(0)) * (1.0 + 0.25 * smooth_field(rng, shape, coarse=6))
        necro = rng.uniform(*spec["necrosis"])
        oedema = rng.uniform(*spec["oedema"])
        ed = (r < oedema) & brain & (seg == 0)
        seg[ed] = ED
        if "cavity" in spec:
            cavity = rng.uniform(*spec["cavity"])
            wall = (r < 1.0) & brain
            residual = smooth_field(rng, shape, coarse=4) > 0.0  # enhancement on part of the wall only
            seg[wall & residual] = ET
            if necro > 0:
                seg[wall & ~residual & (smooth_field(rng, shape, coarse=5) > 1.0 - 2 * necro)] = NCR
            seg[(r < cavity) & brain] = RC
            continue
        seg[(r < 1.0) & brain] = ET
        if necro > 0:
            seg[(r < necro) & brain] = NCR
    return seg

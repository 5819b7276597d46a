"""Brain lesions by archetype, with irregular shapes (``docs/scenarios.md`` gives the sources).

The generator's internal codes (``generate`` writes each site's labelling protocol from them):
1 NCR necrosis / cyst, 2 ED oedema (SNFH), 3 RC resection cavity, 4 ET enhancing tumour,
5 FE faint enhancement (a shell outside the enhancing rim whose label is a documented disagreement:
ET at some sites, core at others; ``scenarios.write_labels``), 6 NET solid non-enhancing tumour (always
tumour core; written as label 1 like necrosis, but a convention that moves necrosis out of the core
keeps it in).

Shapes are not concentric spheres: a core is a union of 2-4 noise-displaced ellipsoids (lobulated);
necrosis is an off-centre, noise-thresholded part of it; the enhancing rim is what is left, so its
thickness varies; oedema grows from the core faster in white matter than in grey matter (it infiltrates
along white-matter tracts).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import smooth_field

NCR, ED, RC, ET, FE, NET = 1, 2, 3, 4, 5, 6
ARCHETYPES = ("glioma", "metastasis", "meningioma", "pediatric", "ssa", "postop", "pediatric-cystic")
# radius: core radius in mm; count: lesions per case; oedema: oedema reach in core radii (white matter; grey
# matter reaches 60 % of it); necrosis: necrotic fraction of the core (0: solid); et: probability that a lesion
# enhances at all; faint: faint-enhancement shell width in voxels; cyst (S3's paediatric archetype only): the
# probability that a case has a cyst and the cyst's share of the core radius
LESION_TYPES = {
    "glioma": dict(count=(1, 1), radius=(12.0, 22.0), oedema=(1.4, 2.2), necrosis=(0.3, 0.6), et=1.0, faint=1),
    "metastasis": dict(count=(1, 6), radius=(4.0, 9.0), oedema=(2.0, 4.0), necrosis=(0.0, 0.35), et=1.0, faint=1),
    "meningioma": dict(count=(1, 2), radius=(10.0, 20.0), oedema=(1.0, 1.6), necrosis=(0.0, 0.15), et=1.0, faint=1),
    "pediatric": dict(count=(1, 1), radius=(14.0, 22.0), oedema=(1.1, 1.5), necrosis=(0.0, 0.2), et=0.4, faint=1),
    "ssa": dict(count=(1, 1), radius=(16.0, 24.0), oedema=(1.6, 2.4), necrosis=(0.3, 0.6), et=1.0, faint=1),
    # S3's paediatric site: the midline tumour of "pediatric" with a cystic component in half of the cases (BraTS-PEDs
    # annotates the cyst as a class of its own, CC); a new type, so S1/S2's paediatric cases stay as they were
    "pediatric-cystic": dict(
        count=(1, 1),
        radius=(14.0, 22.0),
        oedema=(1.1, 1.5),
        necrosis=(0.0, 0.2),
        et=0.4,
        faint=1,
        cyst=(0.5, 0.45, 0.7),
    ),
    # after resection: a fluid-filled cavity, residual enhancement on part of its wall, a little residual core
    "postop": dict(
        count=(1, 1), radius=(16.0, 24.0), oedema=(1.4, 1.9), necrosis=(0.0, 0.25), et=1.0, faint=0, cavity=(0.65, 0.85)
    ),
}
# the diagnosis each archetype's cases carry (a case's "type" in the manifest, UMS-Rep's scan-level second task):
# SSA's are adult gliomas on poorer scanners, post-operative cases are operated gliomas
TUMOUR_TYPE = {
    "glioma": "glioma",
    "metastasis": "metastasis",
    "meningioma": "meningioma",
    "pediatric": "pediatric",
    "pediatric-cystic": "pediatric",
    "ssa": "glioma",
    "postop": "glioma",
}
PONS_MNI = np.array([0.0, -28.0, -32.0])  # mm, where paediatric diffuse midline gliomas mostly arise


def _lobulated(grid, centre, radius_vox: np.ndarray, rng, shape) -> np.ndarray:
    """Normalized distance (< 1 inside) to a core made of 2-4 noise-displaced ellipsoids."""
    r = None
    for i in range(int(rng.integers(2, 5))):
        offset = 0.0 if i == 0 else rng.normal(0, 0.45, size=3) * radius_vox
        axes = radius_vox * rng.uniform(0.55, 1.0, size=3) * (1.0 if i == 0 else rng.uniform(0.5, 0.85))
        rel = (grid - (centre + offset).reshape(3, 1, 1, 1)) / axes.reshape(3, 1, 1, 1)
        ri = np.sqrt((rel**2).sum(0))
        r = ri if r is None else np.minimum(r, ri)
    return r * (1.0 + 0.3 * smooth_field(rng, shape, coarse=7))


def _centre(kind: str, tissue: dict, depth_mm, radius: float, occupied, rng, affine) -> np.ndarray:
    shape = depth_mm.shape
    parenchyma = (tissue["wm"] + tissue["gm"]) > 0.5
    if kind == "meningioma":  # dural-based: at the brain surface, so part of it lies outside the brain
        ok = np.argwhere((depth_mm > 0) & (depth_mm < 3.0) & ~occupied)
    elif kind.startswith("pediatric"):  # pons / midline: nearest brain voxels to the MNI pons
        vox = np.linalg.solve(affine[:3, :3], PONS_MNI - affine[:3, 3])
        idx = np.argwhere(parenchyma & ~occupied)
        d = np.linalg.norm(idx - vox, axis=1)
        ok = idx[d <= max(d.min() + 2.0, 2.0)]
    elif kind == "metastasis":  # grey-white junction
        junction = (np.abs(tissue["gm"] - tissue["wm"]) < 0.3) & (tissue["gm"] > 0.2) & (tissue["wm"] > 0.2)
        ok = np.argwhere(junction & (depth_mm > radius * 0.6 + 3) & ~occupied)
    else:
        ok = np.argwhere(parenchyma & (depth_mm > radius * 0.9 + 4) & ~occupied)
    if len(ok) == 0:
        ok = np.argwhere(parenchyma & ~occupied)
    if len(ok) == 0:
        ok = np.argwhere(np.ones(shape, bool))
    return ok[rng.integers(len(ok))].astype(np.float32)


def insert_lesions(
    tissue: dict[str, np.ndarray], kind: str, spacing: float, rng: np.random.Generator, affine: np.ndarray | None = None
) -> np.ndarray:
    """A map of the generator's codes (uint8) for one case of archetype ``kind``.

    Lesion voxels may lie outside the brain mask (a meningioma sits on the dura): ``generate`` renders
    the brain plus the lesion.
    """
    if kind not in LESION_TYPES:
        raise ValueError(f"unknown lesion kind {kind!r}; expected one of {sorted(LESION_TYPES)}")
    spec = LESION_TYPES[kind]
    shape = tissue["wm"].shape
    affine = np.diag([spacing, spacing, spacing, 1.0]) if affine is None else affine
    brain = (tissue["csf"] + tissue["gm"] + tissue["wm"]) > 0.5
    depth_mm = ndimage.distance_transform_edt(brain) * spacing
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    seg = np.zeros(shape, np.uint8)
    wm_speed = 0.6 + 0.4 * np.clip(tissue["wm"] / (tissue["wm"] + tissue["gm"] + 1e-3), 0, 1)
    for _ in range(int(rng.integers(spec["count"][0], spec["count"][1] + 1))):
        radius = rng.uniform(*spec["radius"])
        radius = max(radius, 1.5 * spacing)  # at least about a voxel and a half: still a lesion at coarse spacing
        centre = _centre(kind, tissue, depth_mm, radius, seg > 0, rng, affine)
        r = _lobulated(grid, centre, np.full(3, radius / spacing), rng, shape)
        core = r < 1.0
        region = brain | core if kind == "meningioma" else brain
        core &= region
        if not core.any():
            continue
        # oedema: reach measured from the core, further along white matter
        dist_mm = ndimage.distance_transform_edt(~core) * spacing
        reach = (rng.uniform(*spec["oedema"]) - 1.0) * radius
        oedema = (dist_mm < reach * wm_speed * (1.0 + 0.35 * smooth_field(rng, shape, coarse=6))) & brain & ~core
        seg[oedema & (seg == 0)] = ED
        if "cavity" in spec:
            cavity = r < rng.uniform(*spec["cavity"])
            residual = smooth_field(rng, shape, coarse=4) > 0.0  # enhancement on part of the wall only
            wall = core & ~cavity
            seg[wall & residual] = ET
            seg[wall & ~residual] = NCR if rng.uniform() < 0.5 else ED
            seg[cavity & region] = RC
            continue
        necrosis_fraction = rng.uniform(*spec["necrosis"])
        enhancing = rng.uniform() < spec["et"]
        if kind == "meningioma":  # homogeneous, avid enhancement; a little non-enhancing core at most
            seg[core] = ET
            if necrosis_fraction > 0:
                seg[core & (smooth_field(rng, shape, coarse=6) > 1.0 - necrosis_fraction)] = NCR
            continue
        if not enhancing:  # an expansile non-enhancing mass (paediatric midline tumours, often), maybe a cyst
            seg[core] = NET
            if necrosis_fraction > 0:
                seg[core & (smooth_field(rng, shape, coarse=6) > 1.0 - necrosis_fraction)] = NCR
            _cyst(seg, core, spec, grid, centre, radius / spacing, rng, shape)
            continue
        # necrosis: an off-centre, irregular part of the core; the enhancing rim is the rest
        shift = rng.normal(0, 0.25, size=3) * radius / spacing
        rn = _lobulated(grid, centre + shift, np.full(3, radius / spacing), rng, shape)
        necrotic = core & (rn < necrosis_fraction * 1.25) if necrosis_fraction > 0 else np.zeros(shape, bool)
        seg[core] = ET
        seg[necrotic] = NCR
        if spec["faint"]:  # a faint-enhancement shell on part of the rim's outside
            shell = ndimage.binary_dilation(core, iterations=spec["faint"]) & ~core & region
            seg[shell & (smooth_field(rng, shape, coarse=5) > 0.0) & (seg == ED)] = FE
        _cyst(seg, core, spec, grid, centre, radius / spacing, rng, shape)
    return seg


def _cyst(seg, core, spec, grid, centre, radius_vox: float, rng, shape) -> None:
    """A fluid cyst (written as code NCR: necrosis / cyst) inside part of the core, for types with ``cyst``
    (probability, share of the core radius low, high); no random draw for the others."""
    if "cyst" not in spec:
        return
    chance, low, high = spec["cyst"]
    if rng.uniform() >= chance:
        return
    shift = rng.normal(0, 0.2, size=3) * radius_vox
    rc = _lobulated(grid, centre + shift, np.full(3, radius_vox), rng, shape)
    seg[core & (rc < rng.uniform(low, high))] = NCR

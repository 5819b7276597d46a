"""Label conventions in millimetres (S3 on): how a site's annotators turn the generator's codes into labels.

S0-S2 keep the rules they were first generated with (``scenarios.write_labels``, legacy): there the oedema
shift was rounded to whole voxels (``int(round(0.5))`` is 0, so kappa 0.5 had no C1) and C2 met almost no
necrosis. Here (``convention["rules"] == "mm"``):

- **C1, oedema extent**: the whole-tumour boundary moves by ``oedema * kappa * OEDEMA_MM`` millimetres on a
  distance map. A voxel's distance to the lesion is measured from the lesion's voxel faces (the Euclidean
  distance between voxel centres minus half a voxel), so at 3 mm a 1.5 mm shift takes the face neighbours, a
  3 mm shift also the edge neighbours, and nothing rounds to zero.
- **C2, what the tumour core contains**: a spatially coherent ``kappa`` share of the necrosis / cyst is written
  as oedema (outside the core, inside the whole tumour).
- **C3, faint enhancement**: a ``kappa`` share of the faint-enhancement shell is written as enhancing.
- **Annotator noise** (every S3 site, not a convention): the whole-tumour outline moves by up to
  ``boundary_noise_mm`` in or out along a smooth random field, independently per case.

Solid non-enhancing tumour keeps its own code (NET) here: a protocol with a separate non-enhancing class
(``brats-peds``) writes it as such, every other protocol as core (``generate.protocol_labels``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy import smooth_field
from .lesions import ED, ET, FE, NCR

OEDEMA_MM = 3.0  # C1 at kappa 1: the whole-tumour boundary moves by 3 mm


def shift_boundary(
    labels: np.ndarray, shift_mm: float | np.ndarray, spacing: float, allowed: np.ndarray | None = None
) -> np.ndarray:
    """``labels`` with the whole-tumour boundary moved out (``shift_mm`` > 0: the surrounding voxels within that
    distance labelled oedema, inside ``allowed``) or in (< 0: the oedema voxels within that distance of the
    outside unlabelled; the core is never removed). ``shift_mm``: one value or one per voxel."""
    out = labels.copy()
    lesion = out > 0
    if not lesion.any():
        return out
    shift = np.broadcast_to(np.asarray(shift_mm, dtype=np.float32), out.shape)
    outside_mm = ndimage.distance_transform_edt(~lesion) * spacing - spacing / 2
    grow = ~lesion & (shift > 0) & (outside_mm <= shift)
    if allowed is not None:
        grow &= allowed
    inside_mm = ndimage.distance_transform_edt(lesion) * spacing - spacing / 2
    shrink = (out == ED) & (shift < 0) & (inside_mm <= -shift)
    out[grow] = ED
    out[shrink] = 0
    return out


def write_labels_mm(
    seg: np.ndarray, convention: dict, rng: np.random.Generator, brain: np.ndarray | None, spacing: float
) -> np.ndarray:
    """The generator's codes as this site's annotators label them (codes 1 NCR, 2 ED, 4 ET, 6 NET; no FE).

    Both random fields are drawn whatever the convention, so the same case gets the same annotator noise and
    the same relabelled part at every kappa (a curve over kappa changes the convention only)."""
    kappa = float(convention.get("kappa", 0.0))
    noise = smooth_field(rng, seg.shape, coarse=6)  # the annotator's boundary noise
    field = smooth_field(rng, seg.shape, coarse=5)  # which part C2 and C3 relabel at kappa < 1
    out = seg.copy()
    out[out == FE] = NCR  # reference: faint enhancement is core, not enhancing
    if kappa > 0:
        shift = convention.get("oedema", 0) * kappa * OEDEMA_MM
        if shift:
            out = shift_boundary(out, shift, spacing, brain)
        chosen = field >= (np.quantile(field, 1.0 - kappa) if kappa < 1 else -np.inf)
        if convention.get("tc_excludes_necrosis"):
            out[(seg == NCR) & chosen] = ED
        if convention.get("faint_is_et"):
            out[(seg == FE) & chosen] = ET
    amplitude = float(convention.get("boundary_noise_mm", 0.0))
    if amplitude:
        out = shift_boundary(out, amplitude * noise, spacing, brain)
    return out

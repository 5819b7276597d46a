"""Per-institution scanner and labelling profiles, deterministic from (seed, site index)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from uharmony.vocabulary import MODALITIES

EXTRA_MODALITIES = ("adc",)  # acquired only by some sites (a joining site brings it)
# Relative tissue intensities per contrast: CSF, GM, WM, necrosis, oedema, enhancing, resection cavity.
# The cavity is fluid: CSF-like, with some FLAIR signal (proteinaceous fluid, blood products). ADC is the
# apparent diffusion coefficient map: free water (CSF, cavity) high, cellular enhancing tumour low.
TISSUE_INTENSITY = {
    "t1": dict(csf=0.25, gm=0.55, wm=0.80, ncr=0.30, ed=0.50, et=0.55, rc=0.20),
    "t1ce": dict(csf=0.25, gm=0.55, wm=0.80, ncr=0.20, ed=0.50, et=1.25, rc=0.22),
    "t2": dict(csf=1.00, gm=0.65, wm=0.45, ncr=0.95, ed=0.85, et=0.70, rc=1.05),
    "flair": dict(csf=0.15, gm=0.60, wm=0.45, ncr=0.60, ed=1.00, et=0.75, rc=0.35),
    "adc": dict(csf=1.00, gm=0.27, wm=0.23, ncr=0.60, ed=0.45, et=0.25, rc=0.95),
}
# faint enhancement: like oedema, but part-way to the enhancing rim on T1ce; solid non-enhancing tumour:
# T1-dark, T2/FLAIR-bright, no enhancement
for _m, _fe, _net in (
    ("t1", 0.50, 0.40),
    ("t1ce", 0.85, 0.42),
    ("t2", 0.82, 0.85),
    ("flair", 0.95, 0.88),
    ("adc", 0.40, 0.35),
):
    TISSUE_INTENSITY[_m]["fe"], TISSUE_INTENSITY[_m]["net"] = _fe, _net
# full sub-regions (BraTS 2021 labels), whole tumour only, or BraTS 2024 post-operative labels (+ cavity)
LABEL_PROTOCOLS = ("full", "wt", "brats2024")


@dataclass(frozen=True)
class SiteProfile:
    """How one institution's scanner and annotators turn anatomy into images and labels."""

    name: str
    scale: dict[str, float]  # scanner units per relative intensity
    gamma: dict[str, float]  # non-linear contrast curve exponent
    bias: float  # amplitude of the smooth multiplicative bias field
    noise: float  # Rician noise sigma (relative to the WM intensity)
    blur: float  # in-plane blur sigma (voxels)
    slice_blur: float  # extra through-plane blur sigma (voxels) on every contrast
    modalities: tuple[str, ...] = MODALITIES
    labels: str = "full"
    lesion: str = "glioma"
    # archetype -> weight: each case draws its archetype from this mix (S4: sites with a case mix of several
    # tumour types); empty: every case is ``lesion``
    lesion_mix: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    thick_contrasts: tuple[str, ...] = ()  # contrasts acquired as 2-D stacks of thick slices
    slice_thickness: float = 0.0  # their slice thickness in mm (through-plane blur to it)
    contrast: float = 1.0  # < 1: tissue contrast compressed toward the brain's mean (low-field, poor protocols)
    brain_scale: float = 1.0  # < 1: a smaller head (children)
    convention: dict = field(default_factory=dict)  # how its annotators deviate (``scenarios.write_labels``)
    cases: int = 0  # its number of cases (0: the federation's cases per site)

    def to_dict(self) -> dict:
        return asdict(self)


def make_site_profile(seed: int, index: int, name: str | None = None) -> SiteProfile:
    """Deterministic, measurably different profile per site. Site index i cycles through: glioma vs
    metastasis lesions (i even/odd), a site without T1 (i % 4 == 2) and a whole-tumour-only labelling
    site (i % 4 == 3); scanner parameters are drawn from ``seed`` and ``index``."""
    rng = np.random.default_rng([seed, index, 7919])
    missing = {"t1"} if index % 4 == 2 else set()
    return SiteProfile(
        name=name or f"site-{index + 1}",
        scale={m: float(rng.choice([100.0, 500.0, 1000.0, 3000.0]) * rng.uniform(0.8, 1.2)) for m in MODALITIES},
        gamma={m: float(rng.uniform(0.7, 1.4)) for m in MODALITIES},
        bias=float(rng.uniform(0.05, 0.35)),
        noise=float(rng.uniform(0.01, 0.06)),
        blur=float(rng.uniform(0.0, 0.8)),
        slice_blur=float(rng.choice([0.0, 0.0, 1.0, 1.8])),
        modalities=tuple(m for m in MODALITIES if m not in missing),
        labels="wt" if index % 4 == 3 else "full",
        lesion="glioma" if index % 2 == 0 else "metastasis",
    )


def make_join_profile(seed: int, index: int, name: str | None = None) -> SiteProfile:
    """A site that joins a running federation with what the federation has never seen: post-operative
    glioma with a resection cavity labelled in the BraTS 2024 convention (a new class, RC) and an extra
    ADC contrast (a new modality), on its own scanner profile (drawn like ``make_site_profile``)."""
    base = make_site_profile(seed, index, name)
    rng = np.random.default_rng([seed, index, 7919, 1])
    scale = {
        **base.scale,
        **{m: float(rng.choice([500.0, 1000.0, 3000.0]) * rng.uniform(0.8, 1.2)) for m in EXTRA_MODALITIES},
    }
    gamma = {**base.gamma, **{m: float(rng.uniform(0.8, 1.2)) for m in EXTRA_MODALITIES}}
    return SiteProfile(
        name=base.name,
        scale=scale,
        gamma=gamma,
        bias=base.bias,
        noise=base.noise,
        blur=base.blur,
        slice_blur=base.slice_blur,
        modalities=MODALITIES + EXTRA_MODALITIES,
        labels="brats2024",
        lesion="postop",
    )

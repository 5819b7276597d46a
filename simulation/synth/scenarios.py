"""The benchmark's pre-registered scenarios (``docs/scenarios.md`` gives every parameter's source).

- **S0**, acquisition shift only: five adult-glioma sites (archetype GLI) with their own scanners, equal
  sizes, one labelling convention. FedAvg should be optimal here.
- **S1**, plus case mix: the archetypes GLI, MET, MEN, PED, SSA, one site each, skewed sizes; one convention.
- **S2**, plus label-convention conflicts at strength ``kappa`` (``write_labels``): C1 oedema extent, C2 what
  the tumour core contains, C3 whether faint enhancement is enhancing. At kappa 0, S2 is S1. Kept exactly as
  first generated (its records stay valid); what it does not contain is in docs/scenarios.md.
- **S3**, the paper's setting: sites whose modality sets and label spaces differ, conventions in millimetres
  (``conventions.py``), two adult-glioma sites on similar scanners with different conventions, a harder image.
- **S4**, mixed case mix: S1's five scanners, each site with cases of several tumour types in its own
  proportions (a cancer centre mostly metastases, a children's hospital mostly paediatric tumours), one
  convention: the tumour type is a scan-level task that is not the site (UMS-Rep's second task).

Every parameter was fixed from the documented ranges before any method was run on these scenarios and
is not tuned to a method.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from uharmony.vocabulary import SCENARIOS  # noqa: F401 - the names live with the light vocabulary

from .anatomy import smooth_field
from .conventions import write_labels_mm
from .lesions import ED, ET, FE, NCR, NET
from .profiles import MODALITIES, SiteProfile

SITE_ARCHETYPES = ("glioma", "metastasis", "meningioma", "pediatric", "ssa")  # S1/S2, one site each
SIZE_RATIOS = (2.0, 1.4, 1.0, 0.75, 0.6)  # S1/S2: skewed site sizes (FeTS partitions are strongly imbalanced)
# acquisition ranges per archetype: noise (Rician sigma relative to white matter), bias-field amplitude,
# gamma (contrast curve), thickness (mm) of the contrasts acquired as 2-D slice stacks, contrast compression
_HOSPITAL = dict(  # a well-equipped hospital's 3 T or 1.5 T protocol (GLI, MET and MEN sites alike)
    noise=(0.01, 0.04),
    bias=(0.1, 0.3),
    gamma=(0.8, 1.25),
    thick=("t2", "flair"),
    slice=(3.0, 5.0),
    contrast=(1.0, 1.0),
    brain=(1.0, 1.0),
)
ACQUISITION = {
    "glioma": _HOSPITAL,
    "metastasis": _HOSPITAL,
    "meningioma": _HOSPITAL,
    "pediatric": dict(
        noise=(0.01, 0.04),
        bias=(0.1, 0.3),
        gamma=(0.8, 1.25),
        thick=("t2", "flair"),
        slice=(3.0, 4.0),
        contrast=(0.55, 0.8),
        brain=(0.85, 0.93),
    ),
    "ssa": dict(
        noise=(0.06, 0.10),
        bias=(0.2, 0.4),
        gamma=(0.75, 1.3),
        thick=("t1", "t2", "flair"),
        slice=(5.0, 6.0),
        contrast=(0.6, 0.8),
        brain=(1.0, 1.0),
    ),
}
# S2's annotators, one per archetype site: oedema boundary shift (C1: its sign), whether the
# tumour core excludes necrosis (C2), whether faint enhancement counts as enhancing (C3). GLI is the reference.
CONVENTIONS = {
    "glioma": dict(oedema=0, tc_excludes_necrosis=False, faint_is_et=False),
    "metastasis": dict(oedema=+1, tc_excludes_necrosis=False, faint_is_et=True),
    "meningioma": dict(oedema=-1, tc_excludes_necrosis=True, faint_is_et=False),
    "pediatric": dict(oedema=0, tc_excludes_necrosis=True, faint_is_et=False),
    "ssa": dict(oedema=+1, tc_excludes_necrosis=False, faint_is_et=True),
}
OEDEMA_MM = 3.0  # C1 at kappa 1: the oedema boundary moves by 3 mm (S0-S2: rounded to whole voxels)


def _acquisition(archetype: str, seed: int, index: int, name: str) -> dict:
    a = ACQUISITION[archetype]
    rng = np.random.default_rng([seed, index, 7919, 14])
    return dict(
        name=name,
        scale={m: float(rng.choice([100.0, 500.0, 1000.0, 3000.0]) * rng.uniform(0.8, 1.2)) for m in MODALITIES},
        gamma={m: float(rng.uniform(*a["gamma"])) for m in MODALITIES},
        bias=float(rng.uniform(*a["bias"])),
        noise=float(rng.uniform(*a["noise"])),
        blur=float(rng.uniform(0.0, 0.6)),
        slice_blur=0.0,
        thick_contrasts=tuple(a["thick"]),
        slice_thickness=float(rng.uniform(*a["slice"])),
        contrast=float(rng.uniform(*a["contrast"])),
        brain_scale=float(rng.uniform(*a["brain"])),
    )


def scenario_profiles(scenario: str, seed: int, cases_per_site: int = 8, kappa: float = 1.0) -> list[SiteProfile]:
    """The five sites of ``scenario`` (their scanners drawn from ``seed``)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    if not 0.0 <= kappa <= 2.0:
        raise ValueError(f"kappa must be in [0, 2], got {kappa}")
    if scenario == "S3":
        return s3_profiles(seed, cases_per_site, kappa)
    if scenario == "S4":
        return s4_profiles(seed, cases_per_site)
    profiles = []
    for i in range(len(SITE_ARCHETYPES)):
        archetype = "glioma" if scenario == "S0" else SITE_ARCHETYPES[i]
        cases = cases_per_site if scenario == "S0" else max(3, round(SIZE_RATIOS[i] * cases_per_site))
        convention = {**CONVENTIONS[archetype], "kappa": kappa} if scenario == "S2" and kappa > 0 else {}
        profiles.append(
            SiteProfile(
                **_acquisition(archetype, seed, i, f"site-{i + 1}"),
                lesion=archetype,
                labels="full",
                convention=convention,
                cases=cases,
            )
        )
    return profiles


# S3 (docs/scenarios.md): per site its archetype, lesion type, acquired modalities, labelling protocol,
# convention (C1 sign, C2, C3) and size ratio. Sites 1 and 2 are adult-glioma hospitals on near-identical
# scanners (site 2's drawn as a perturbation of site 1's) that label differently: no gate can tell them apart
# from the image alone, which the benchmark reports rather than hides.
S3_SITES = (
    dict(archetype="glioma", lesion="glioma", modalities=MODALITIES, labels="full", convention={}, ratio=2.0),
    dict(
        archetype="glioma",
        lesion="glioma",
        modalities=MODALITIES,
        labels="full",
        convention=dict(oedema=+1, tc_excludes_necrosis=True),
        ratio=1.4,
    ),
    dict(  # a metastasis collection without T2
        archetype="metastasis",
        lesion="metastasis",
        modalities=("t1", "t1ce", "flair"),
        labels="full",
        convention=dict(oedema=+1, faint_is_et=True),
        ratio=1.0,
    ),
    dict(  # a meningioma site without T1 that annotates the whole tumour only
        archetype="meningioma",
        lesion="meningioma",
        modalities=("t1ce", "t2", "flair"),
        labels="wt",
        convention=dict(oedema=-1),
        ratio=0.75,
    ),
    dict(  # BraTS-PEDs labels (ET, NET, CC, ED: a separate non-enhancing class); its annotators put cysts outside TC
        archetype="pediatric",
        lesion="pediatric-cystic",
        modalities=MODALITIES,
        labels="brats-peds",
        convention=dict(tc_excludes_necrosis=True),
        ratio=0.6,
    ),
)
S3_BOUNDARY_NOISE_MM = 3.0  # annotator noise of the whole-tumour outline, every S3 site
# the harder image of S3, per case: contrast-agent dose (share of full enhancement on T1ce) and how far solid
# non-enhancing tumour's intensities sit from oedema's (0: identical, 1: the generator's usual NET)
S3_IMAGE = dict(dose=(0.6, 1.0), net_contrast=(0.0, 0.35))


def _twin(acquisition: dict, seed: int, name: str) -> dict:
    """A scanner like ``acquisition``'s: the same protocol on another unit of the same make (noise, bias, gamma,
    blur and slice thickness within a few per cent; its own gains, which z-scoring removes)."""
    rng = np.random.default_rng([seed, 1, 7919, 15])
    a = dict(acquisition, name=name)
    a["scale"] = {m: float(rng.choice([100.0, 500.0, 1000.0, 3000.0]) * rng.uniform(0.8, 1.2)) for m in MODALITIES}
    a["noise"] = acquisition["noise"] * float(rng.uniform(0.9, 1.1))
    a["bias"] = acquisition["bias"] + float(rng.uniform(-0.02, 0.02))
    a["gamma"] = {m: g * float(rng.uniform(0.97, 1.03)) for m, g in acquisition["gamma"].items()}
    a["blur"] = acquisition["blur"] * float(rng.uniform(0.9, 1.1))
    a["slice_thickness"] = acquisition["slice_thickness"] + float(rng.uniform(-0.25, 0.25))
    return a


def s3_profiles(seed: int, cases_per_site: int = 8, kappa: float = 1.0) -> list[SiteProfile]:
    """S3's five sites (``S3_SITES``), their scanners drawn from ``seed``."""
    profiles, first = [], None
    for i, site in enumerate(S3_SITES):
        name = f"site-{i + 1}"
        acquisition = _acquisition(site["archetype"], seed, i, name) if i != 1 else _twin(first, seed, name)
        first = first or acquisition
        convention = {**site["convention"], "rules": "mm", "kappa": kappa, "boundary_noise_mm": S3_BOUNDARY_NOISE_MM}
        profiles.append(
            SiteProfile(
                **acquisition,
                modalities=tuple(site["modalities"]),
                lesion=site["lesion"],
                labels=site["labels"],
                convention=convention,
                cases=max(3, round(site["ratio"] * cases_per_site)),
                extra={"image": S3_IMAGE},
            )
        )
    return profiles


def write_labels(
    seg: np.ndarray, convention: dict, rng: np.random.Generator, brain: np.ndarray | None = None, spacing: float = 3.0
) -> np.ndarray:
    """The generator's codes as this site's annotators label them (codes 1 NCR, 2 ED, 4 ET; no FE left).

    A convention with ``"rules": "mm"`` (S3 on) follows ``conventions.write_labels_mm``; the rest (S0-S2) the
    rules below, kept as first generated.

    Reference (no convention): faint enhancement is non-enhancing core (NCR), necrosis is core, oedema
    as generated. A convention moves the oedema boundary by ``oedema * kappa * OEDEMA_MM`` mm (C1),
    writes a ``kappa`` fraction of the necrosis as oedema (C2: outside the core) and a ``kappa`` fraction
    of the faint enhancement as enhancing (C3); the fractions are spatially coherent (a smooth field).
    """
    if convention.get("rules") == "mm":
        return write_labels_mm(seg, convention, rng, brain, spacing)
    out = seg.copy()
    kappa = float(convention.get("kappa", 0.0))
    out[(out == FE) | (out == NET)] = NCR
    if not convention or kappa == 0:
        return out
    shift = int(round(convention.get("oedema", 0) * kappa * OEDEMA_MM / spacing))
    lesion = out > 0
    if shift > 0:  # a looser boundary: surrounding brain labelled oedema
        ring = ndimage.binary_dilation(lesion, iterations=shift) & ~lesion & (seg == 0)
        if brain is not None:
            ring &= brain
        out[ring] = ED
    elif shift < 0:  # a tighter one: the outer oedema not labelled
        inner = ndimage.binary_erosion(lesion, iterations=-shift)
        out[(out == ED) & ~inner] = 0
    field = smooth_field(rng, seg.shape, coarse=5)
    fraction = np.quantile(field, 1.0 - min(kappa, 1.0)) if kappa < 1 else -np.inf
    chosen = field >= fraction
    if convention.get("tc_excludes_necrosis"):
        out[(seg == NCR) & chosen] = ED
    if convention.get("faint_is_et"):
        out[(seg == FE) & chosen] = ET
    return out


# S4 (docs/scenarios.md): per site the archetype whose scanner it has (S1's, drawn as S1's from the seed) and its
# case mix (archetype -> share of its cases); sizes as S1's. Every site labels the BraTS 2021 way (one convention).
S4_SITES = (
    dict(archetype="glioma", mix={"glioma": 0.6, "metastasis": 0.25, "meningioma": 0.15}),  # university hospital
    dict(archetype="metastasis", mix={"metastasis": 0.6, "glioma": 0.25, "meningioma": 0.15}),  # cancer centre
    dict(archetype="meningioma", mix={"meningioma": 0.5, "glioma": 0.3, "metastasis": 0.2}),  # neurosurgery
    dict(archetype="pediatric", mix={"pediatric": 0.8, "glioma": 0.2}),  # children's hospital (adolescents too)
    dict(archetype="ssa", mix={"ssa": 0.5, "metastasis": 0.3, "meningioma": 0.2}),  # low-resource hospital
)


def s4_profiles(seed: int, cases_per_site: int = 8) -> list[SiteProfile]:
    """S4's five sites (``S4_SITES``): S1's scanners, each site's cases drawn from its mix of archetypes."""
    profiles = []
    for i, site in enumerate(S4_SITES):
        mix = site["mix"]
        profiles.append(
            SiteProfile(
                **_acquisition(site["archetype"], seed, i, f"site-{i + 1}"),
                lesion=max(mix, key=mix.get),
                lesion_mix=dict(mix),
                labels="full",
                cases=max(3, round(SIZE_RATIOS[i] * cases_per_site)),
            )
        )
    return profiles

"""Generate a multi-site federation as real NIfTI files in the BraTS layout, with its manifest.

Layout: ``ROOT/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` and ``ROOT/federation.json`` (the
federation manifest of ``uharmony.data.manifest``: each site's cases, modalities, label protocol and
the scanner profile it was drawn with). Whole-tumour-only sites write the tumour as label 2 everywhere
and declare ``labels: "wt"``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from uharmony.data.cases import protocol_label_map
from uharmony.data.manifest import write_manifest

from .anatomy import deform, smooth_field, tissue_maps
from .lesions import ED, ET, FE, NCR, NET, RC, TUMOUR_TYPE, insert_lesions
from .profiles import TISSUE_INTENSITY, SiteProfile, make_site_profile
from .scenarios import write_labels


def render(
    tissue: dict[str, np.ndarray],
    seg: np.ndarray,
    modality: str,
    profile: SiteProfile,
    rng: np.random.Generator,
    spacing: float = 3.0,
    case: dict | None = None,
    clean: list | None = None,
) -> np.ndarray:
    """One contrast of one subject as seen by the site's scanner (skull-stripped, float32). ``case``: this
    subject's draws of a harder image (``case_image``), else the generator's usual intensities. ``clean``: a
    list that gets the same image without the scanner's noise (the noise is drawn last, from the same stream
    either way)."""
    ti = case_intensities(modality, case) if case else TISSUE_INTENSITY[modality]
    img = ti["csf"] * tissue["csf"] + ti["gm"] * tissue["gm"] + ti["wm"] * tissue["wm"]
    for label, key, mix in (
        (ED, "ed", 0.75),
        (FE, "fe", 0.9),
        (ET, "et", 1.0),
        (NCR, "ncr", 1.0),
        (NET, "net", 1.0),
        (RC, "rc", 1.0),
    ):
        region = seg == label
        img[region] = mix * ti[key] + (1 - mix) * img[region]
    brain = ((tissue["csf"] + tissue["gm"] + tissue["wm"]) > 0.5) | (seg > 0)  # a dural lesion lies outside
    if profile.contrast != 1.0:  # compressed tissue contrast
        mean = float(img[brain].mean())
        img = mean + profile.contrast * (img - mean)
    img = np.clip(img, 0, None) ** profile.gamma[modality]
    img *= 1.0 + profile.bias * smooth_field(rng, img.shape, coarse=3)
    through = profile.slice_blur
    if modality in profile.thick_contrasts and profile.slice_thickness > spacing:  # a 2-D stack of thick slices
        through += np.sqrt(profile.slice_thickness**2 - spacing**2) / 2.355 / spacing
    if profile.blur or through:
        img = ndimage.gaussian_filter(img, sigma=(profile.blur, profile.blur, profile.blur + through))
    if clean is not None:
        clean.append((img * profile.scale[modality] * brain).astype(np.float32))
    sigma = profile.noise
    img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
    return (img * profile.scale[modality] * brain).astype(np.float32)


def case_image(profile: SiteProfile, rng: np.random.Generator) -> dict | None:
    """A subject's draws for a profile with a harder image (``extra["image"]``, S3): the contrast-agent dose (the
    share of full enhancement T1ce shows) and how far solid non-enhancing tumour sits from oedema in every
    contrast; None (and no random draw) for the other profiles."""
    spec = profile.extra.get("image") if profile.extra else None
    if not spec:
        return None
    return {"dose": float(rng.uniform(*spec["dose"])), "net_contrast": float(rng.uniform(*spec["net_contrast"]))}


def case_intensities(modality: str, case: dict) -> dict:
    """``TISSUE_INTENSITY[modality]`` for one subject of a harder image: enhancement scaled by the dose between the
    unenhanced (T1) and the full T1ce value; NET pulled towards oedema."""
    ti = dict(TISSUE_INTENSITY[modality])
    if modality == "t1ce":
        t1 = TISSUE_INTENSITY["t1"]
        for key in ("et", "fe"):
            ti[key] = t1[key] + case["dose"] * (ti[key] - t1[key])
    ti["net"] = ti["ed"] + case["net_contrast"] * (ti["net"] - ti["ed"])
    return ti


# BraTS-PEDs 2023 (a separate non-enhancing class): 1 ET, 2 NET, 3 CC (cyst / necrosis), 4 ED
_PEDS = np.zeros(7, np.uint8)
_PEDS[[NCR, ED, ET, NET]] = (3, 4, 1, 2)


def protocol_labels(seg: np.ndarray, protocol: str) -> np.ndarray:
    """Codes 1 NCR, 2 ED, 3 RC, 4 ET, 6 NET (after ``scenarios.write_labels``) in a labelling protocol's values."""
    if protocol == "brats-peds":
        if ((seg == RC) | (seg == FE)).any():
            raise ValueError("the BraTS-PEDs protocol has no resection-cavity or faint-enhancement label")
        return _PEDS[seg]
    seg = np.where((seg == FE) | (seg == NET), NCR, seg)  # both are core unless a convention says otherwise
    if protocol == "full":  # BraTS 2021: 1 NCR, 2 ED, 4 ET (no cavity in pre-operative scans)
        if (seg == RC).any():
            raise ValueError("the BraTS 2021 protocol has no resection-cavity label; use labels='brats2024'")
        return seg.astype(np.uint8)
    if protocol == "wt":  # whole tumour only, written as 2 (the cavity is not tumour)
        return np.where((seg > 0) & (seg != RC), ED, 0).astype(np.uint8)
    if protocol == "brats2024":  # 1 NETC, 2 SNFH, 3 ET, 4 RC
        lut = np.zeros(5, np.uint8)
        lut[[NCR, ED, ET, RC]] = (1, 2, 3, 4)
        return lut[seg]
    raise ValueError(f"unknown labelling protocol {protocol!r}")


def write_case(
    root: Path,
    case: str,
    tissue: dict,
    seg: np.ndarray,
    affine: np.ndarray,
    profile: SiteProfile,
    rng: np.random.Generator,
    reference: bool = False,
) -> None:
    """One case folder; ``reference``: also ``reference/<case>_<modality>.nii.gz``, each scan without its noise."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    subject = case_image(profile, rng)
    for modality in profile.modalities:
        clean = [] if reference else None
        img = nib.Nifti1Image(render(tissue, seg, modality, profile, rng, float(affine[0, 0]), subject, clean), affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, folder / f"{case}_{modality}.nii.gz")
        if clean:
            (folder / "reference").mkdir(exist_ok=True)
            ref = nib.Nifti1Image(clean[0], affine)
            ref.header.set_xyzt_units("mm")
            nib.save(ref, folder / "reference" / f"{case}_{modality}.nii.gz")
    brain = (tissue["csf"] + tissue["gm"] + tissue["wm"]) > 0.5
    written = write_labels(seg, profile.convention, rng, brain | (seg > 0), float(affine[0, 0]))
    seg_img = nib.Nifti1Image(protocol_labels(written, profile.labels), affine)
    seg_img.header.set_xyzt_units("mm")
    nib.save(seg_img, folder / f"{case}_seg.nii.gz")


PARALLEL_FROM = 16  # cases: below this, starting worker processes costs more than it saves


def _context():
    """Fork where there is one (Linux): the workers run numpy, SciPy and nibabel only, never torch, and a fork
    does not re-run the caller's script (a spawned worker re-imports it: a script without a ``__main__`` guard
    would start the generation again in every worker)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _spawnable() -> bool:
    """Whether a worker can start: a spawned one re-imports the caller's main script, which a script read
    from stdin (``python - <<EOF``) does not have on disk; a forked one needs nothing."""
    if _context().get_start_method() == "fork":
        return True
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return main is None or Path(main).is_file()


GOLDEN = 0.6180339887498949  # the golden ratio's fractional part: a Weyl sequence spreads any run of cases evenly


def case_lesion(profile: SiteProfile, key: list[int]) -> str:
    """The archetype of case ``key[2]`` of site ``key[1]`` (``key``: the case's random stream): the site's
    ``lesion``, or (a site with a ``lesion_mix``) the mix's archetype at the point ``frac(c * GOLDEN + offset)``
    of its cumulative shares, the offset drawn per site from the seed. Every run of a site's cases then has
    each archetype's share to within about one case, a case's archetype depends on nothing but its index (adding
    held-out cases changes no other), and a site without a mix is generated as it always was."""
    if not profile.lesion_mix:
        return profile.lesion
    kinds = sorted(profile.lesion_mix)
    weights = np.array([float(profile.lesion_mix[k]) for k in kinds])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"site {profile.name}: lesion_mix weights must be >= 0, not all 0: {profile.lesion_mix}")
    offset = np.random.default_rng([key[0], key[1], 31]).random()
    point = (key[2] * GOLDEN + offset) % 1.0
    return kinds[min(int(np.searchsorted(np.cumsum(weights) / weights.sum(), point, side="right")), len(kinds) - 1)]


def _case(out: Path, base, affine, profile: SiteProfile, spacing: float, key: list[int], case: str, reference=False):
    """One case, from its own random stream (so cases can be made in any order, in any process)."""
    rng = np.random.default_rng(key)
    tissue = deform(base, rng, brain_scale=profile.brain_scale)
    seg = insert_lesions(tissue, case_lesion(profile, key), spacing, rng, affine)
    write_case(out, case, tissue, seg, affine, profile, rng, reference)


def generate_federation(
    out: str | Path,
    sites: int = 4,
    cases_per_site: int = 8,
    seed: int = 0,
    spacing: float = 3.0,
    first_site: int = 0,
    progress: bool = True,
    profiles: list[SiteProfile] | None = None,
    workers: int | None = None,
    val_cases: int = 0,
    reference: bool = False,
) -> dict:
    """Write the federation under ``out``; returns its description (the manifest's content).

    ``first_site`` offsets the site indices, so ``first_site=sites`` of an existing federation yields
    new, unseen sites with different profiles from the same seed. ``workers``: processes making cases side
    by side (default: one per core, from 16 cases on); the files are the same for any number.
    ``val_cases``: that many more cases per site, drawn like the others and fixed to validation
    (``"split": "val"``): every other case, and the train/validation split of those, is as without them.
    ``reference``: every scan also written without its noise (the manifest's ``reference``; the scans are
    the same as without it), to score denoising against.
    """
    if sites < 1 or cases_per_site < 1:
        raise ValueError(f"need at least one site and one case per site, got sites={sites}, cases={cases_per_site}")
    if not isinstance(val_cases, int) or val_cases < 0:
        raise ValueError(f"val_cases must be a non-negative int, got {val_cases!r}")
    t0 = time.time()
    base, affine = tissue_maps(float(spacing))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profiles = profiles or [make_site_profile(seed, first_site + i) for i in range(sites)]
    jobs, entries = [], []
    for p_idx, profile in enumerate(profiles):
        cases = []
        own = profile.cases or cases_per_site
        for c in range(own + val_cases):  # each case from its own stream: the held-out ones change no other
            case = f"SYN_{first_site + p_idx + 1:03d}_{c:03d}"
            key = [seed, first_site + p_idx, c, 104729]
            jobs.append((profile, key, case))
            cases.append(
                {
                    "id": case,
                    "type": TUMOUR_TYPE[case_lesion(profile, key)],
                    "images": {m: f"{case}/{case}_{m}.nii.gz" for m in profile.modalities},
                    "label": f"{case}/{case}_seg.nii.gz",
                    **({"split": "val"} if c >= own else {}),
                    **(
                        {"reference": {m: f"{case}/reference/{case}_{m}.nii.gz" for m in profile.modalities}}
                        if reference
                        else {}
                    ),  # fmt: skip
                }
            )
        entries.append(
            {
                "name": str(first_site + p_idx + 1),
                "domain": p_idx,
                "labels": protocol_label_map(profile.labels, "site profile"),
                "modalities": list(profile.modalities),
                "cases": cases,
                "profile": profile.to_dict(),
            }
        )
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if len(jobs) >= PARALLEL_FROM and _spawnable() else 1
    with tqdm(total=len(jobs), desc="synthesizing cases", unit="case", disable=not progress) as bar:
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
                futures = [
                    pool.submit(_case, out, base, affine, p, spacing, key, case, reference) for p, key, case in jobs
                ]
                for fut in futures:
                    fut.result()
                    bar.update(1)
        else:
            for p, key, case in jobs:
                _case(out, base, affine, p, spacing, key, case, reference)
                bar.update(1)
    description = {"seed": seed, "spacing_mm": spacing, "seconds": round(time.time() - t0, 2)}
    write_manifest(out, "synthetic", entries, generator=description)
    return {**description, "sites": {e["name"]: e["profile"] for e in entries}}

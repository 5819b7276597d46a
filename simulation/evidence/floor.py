"""The difficulty floor (docs/preregistration.md, T5): an intensity-only, site-blind voxel classifier.

Per voxel, each contrast's z-scored intensity (the preprocessed scan, as the CNNs see it) and its Gaussian
smoothings at sigma 1 and 2 voxels: 4 contrasts x 3 = 12 features, an absent contrast 0. One scikit-learn
``HistGradientBoostingClassifier`` (150 iterations) per region, trained on up to 6,000 random brain voxels and up
to 6,000 lesion voxels of every training case whose site annotates the region (each site's own labels), then
applied to every brain voxel of the validation cases. Scored with the same per-case records as the CNNs.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from simulation.embedded import ensure_federation
from uharmony.data import SiteData, load_federation
from uharmony.data.manifest import cache_root
from uharmony.federation.config import RunConfig
from uharmony.model.lesionwise import lesionwise_dice
from uharmony.vocabulary import MODALITIES as DEFAULT_MODALITIES
from uharmony.vocabulary import REGIONS as DEFAULT_REGIONS

from .design import Size

SAMPLES = 6000  # brain voxels, and lesion voxels, per training case
SIGMAS = (1.0, 2.0)


def features(image: np.ndarray) -> np.ndarray:
    """(voxels, 12) float32 features of a preprocessed scan (4, X, Y, Z)."""
    cols = []
    for c in np.asarray(image, np.float32):
        cols += [c, *(ndimage.gaussian_filter(c, s) for s in SIGMAS)]
    return np.stack([c.ravel() for c in cols], axis=1)


def _brain(image) -> np.ndarray:
    return (np.abs(np.asarray(image)) > 0).any(0).ravel()


def floor_job(size: Size, scenario: str, seed: int) -> dict:
    """Train the classifier on ``scenario``'s federation of ``seed`` and score its validation cases."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    t0 = time.time()
    cfg = RunConfig.from_flwr(size.overrides(scenario, "fedavg", seed))
    fed = load_federation(ensure_federation(cfg, progress=False), seed=cfg.federation_seed)
    rng = np.random.default_rng([seed, 31337])
    data = {
        s.name: SiteData(
            s, cfg.spacing, cfg.patch_size, DEFAULT_MODALITIES, DEFAULT_REGIONS, cache_root() / "preprocessed"
        )
        for s in fed.sites
    }
    models = {}
    for i, region in enumerate(DEFAULT_REGIONS):
        xs, ys = [], []
        for site in data.values():
            for item in site.train:
                if not bool(item["regions"][i]):
                    continue
                feats, label = features(item["image"]), np.asarray(item["label"][i]).ravel() > 0.5
                brain, lesion = (
                    np.flatnonzero(_brain(item["image"])),
                    np.flatnonzero(np.asarray(item["label"]).any(0).ravel()),
                )
                pick = np.concatenate(
                    [
                        rng.choice(brain, min(SAMPLES, brain.size), replace=False),
                        rng.choice(lesion, min(SAMPLES, lesion.size), replace=False),
                    ]
                )
                xs.append(feats[pick])
                ys.append(label[pick])
        x, y = np.concatenate(xs), np.concatenate(ys)
        models[region] = HistGradientBoostingClassifier(max_iter=150, random_state=seed).fit(x, y) if y.any() else None
    cases = []
    for name, site in data.items():
        for item in site.val:
            feats, brain = features(item["image"]), _brain(item["image"])
            rec = {"case": str(item["case_id"]), "site": name, "mode": "floor"}
            for i, region in enumerate(DEFAULT_REGIONS):
                key = region.lower()
                if not bool(item["regions"][i]):
                    rec.update({f"dice-{key}": None, f"truth-{key}": None, f"lesion-{key}": None})
                    continue
                truth = np.asarray(item["label"][i]) > 0.5
                pred = np.zeros(truth.size, bool)
                if models[region] is not None and brain.any():
                    pred[brain] = models[region].predict(feats[brain]).astype(bool)
                pred = pred.reshape(truth.shape)
                both = int(truth.sum() + pred.sum())
                rec[f"dice-{key}"] = round(2.0 * float((pred & truth).sum()) / both, 4) if both else 1.0
                rec[f"truth-{key}"] = int(truth.sum())
                rec[f"lesion-{key}"] = round(lesionwise_dice(pred, truth), 4)
            cases.append(rec)
    return {
        "kind": "floor",
        "scenario": scenario,
        "method": "voxel-classifier",
        "seed": seed,
        "cases": cases,
        "seconds": round(time.time() - t0, 1),
    }

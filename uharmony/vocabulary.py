"""The plain names the library is spoken in: modalities, regions, model choices, parameter roles, plans.

Imports nothing (no torch, no MONAI), so the light modules (the run config, the strategy table, the data
layer's cases and manifests, a site's profile) can use the names without loading the model code. The modules
that give the names their meaning re-export them where callers have always found them
(``uharmony.model.networks``: ``DEFAULT_MODALITIES``, ``DEFAULT_REGIONS``, ``ARCHS``, ``NORMS``, ``HEADS``;
``uharmony.model.roles``: ``SHARED``, ``LOCAL``, ``DOMAIN``, ``ROLES``; ``uharmony.model.norm``: its options).
"""

from __future__ import annotations

# data: the input modalities of a BraTS-like scan, and the BraTS evaluation regions (enhancing, tumour core,
# whole tumour) a model outputs by default
MODALITIES = ("t1", "t1ce", "t2", "flair")
REGIONS = ("ET", "TC", "WT")
# the simulated federations' scenarios (docs/scenarios.md; simulation.synth.scenarios makes them)
SCENARIOS = ("S0", "S1", "S2", "S3", "S4")
# a case's tumour type, the scan-level label of UMS-Rep's second task (docs/umsrep.md): lower-case words
# joined by hyphens; the simulated federations use these four (simulation.synth.lesions.TUMOUR_TYPE)
TUMOUR_TYPES = ("glioma", "metastasis", "meningioma", "pediatric")

# the model (uharmony.model.networks.build_model)
ARCHS = ("dynunet", "swinunetr")
NORMS = ("uharmony", "instance", "batch")
HEADS = ("gated", "plain")
# what the scan gate compares: the head-input features, and the scan's acquisition fingerprint (default)
GATE_DESCRIPTORS = ("features+acquisition", "features")
GATE_UNSEEN = ("shared", "nearest")  # a scan beyond every domain's reach: shared answer | nearest domain
# U-Harmony normalization (uharmony.model.norm.UHarmonyNorm)
SITE_LOCAL_OPTIONS = ("stats", "stats+coefficients")
RESTORE_MODES = ("ratio", "affine", "none")

# parameter roles (uharmony.model.roles): averaged, kept at the site, aggregated per domain
SHARED, LOCAL, DOMAIN = "shared", "local", "domain"
ROLES = (SHARED, LOCAL, DOMAIN)

# UMS-Rep: the run's phases, and the phase-F plans of uharmony.umsrep.plans (every plan but "pretrain";
# tests/test_light_imports.py checks that they match)
PHASES = ("segment", "pretrain")
PRETEXTS = ("denoise", "denoise+inpaint", "denoise+skipdrop")  # phase P's task (uharmony.umsrep.training)
# what the presence head reads (uharmony.model.task_heads): the pooled bottleneck, or every encoder scale pooled
PRESENCE_POOLS = ("bottleneck", "multiscale")
FINETUNE = ("full", "joint", "alternating", "independent", "independent-head")
# 2 (2026-12-07): every task trains on every batch; "independent" = the encoder frozen (it was the heads only,
# now "independent-head"). A run's checkpoints record it; a resume across a change is refused.
PLANS_VERSION = 2

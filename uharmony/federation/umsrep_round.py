"""A site's UMS-Rep work for one message (Flower-free), on a loaded :class:`uharmony.federation.site_round.SiteRound`:
denoising pretraining (phase P, labelled or label-free), fine-tuning under a plan (phase F), recalibrating
the harmonization statistics on clean scans, and the denoising scores. Site-local entries (the U-Harmony
statistics) are saved in the site state folder and never sent.
"""

from __future__ import annotations

import time

from uharmony import protocol as P
from uharmony.federation.federated import local_state_of, subset
from uharmony.federation.site_state import load_optimizer_state, save_local_state, save_optimizer_state
from uharmony.umsrep.plans import get_plan, sendable_keys
from uharmony.umsrep.training import denoise_scores, finetune_steps, pretrain_steps, recalibrate


def _save_local(job, server_round: int) -> dict:
    job.model.cpu()
    local = local_state_of(job.model, job.roles)
    save_local_state(job.state_dir, local, {"round": server_round, "site": job.site.name, "run": job.run_id})
    return local


def _metrics(job, loss: float, steps: int, t0: float) -> dict:
    return {
        P.TRAIN_LOSS: loss,
        P.STEPS: steps,
        P.SECONDS: time.time() - t0,
        P.NUM_EXAMPLES: job.data.num_train_cases,
        P.SKIPPED: len(job.data.skipped),
    }


def recalibrate_site(job, server_round: int, seed: int) -> tuple[dict, dict]:
    """Re-estimate the site's statistics from clean training scans under the loaded weights; saves them.
    Returns (metrics: counts only, the new local state)."""
    t0 = time.time()
    used = recalibrate(
        job.model, job.data.scan_batches(job.cfg.batch_size, job.cfg.calibration_batches, seed), job.device
    )
    local = _save_local(job, server_round)
    job.saved = local
    return {P.NUM_EXAMPLES: job.data.num_train_cases, P.STEPS: used, P.SECONDS: time.time() - t0}, local


def pretrain(job, server_round: int, lr: float, local_steps: int, seed: int):
    """Phase P: (entries to send: trunk + reconstruction head, metrics, new local state)."""
    t0, cfg = time.time(), job.cfg
    sent = sendable_keys(job.model, get_plan("pretrain"), job.roles.outgoing_keys(None))
    opt_state = load_optimizer_state(job.state_dir, job.run_id, server_round) if cfg.keep_optimizer_state else None
    stats = pretrain_steps(
        job.model,
        job.data.scan_batches(cfg.batch_size, local_steps, seed),
        cfg.noise,
        cfg.noise_levels,
        lr,
        seed,
        job.device,
        pretext=cfg.pretext,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        state=opt_state,
    )
    if cfg.keep_optimizer_state:
        save_optimizer_state(job.state_dir, stats["state"], job.run_id, server_round)
    local = _save_local(job, server_round)
    return subset(job.model.state_dict(), sent), _metrics(job, stats["loss"], stats["steps"], t0), local


def finetune(job, server_round: int, lr: float, local_steps: int, proximal_mu: float, seed: int):
    """Phase F under the run's plan: (entries the plan trains, metrics, new local state). The first round of a
    run that starts from a phase-P artifact recalibrates the site's statistics on clean scans first."""
    t0, cfg = time.time(), job.cfg
    plan = get_plan(cfg.finetune)
    outgoing = job.roles.global_keys() if job.pooled else job.roles.outgoing_keys(job.domain)
    sent = sendable_keys(job.model, plan, outgoing)
    if job.saved is None and cfg.umsrep:
        recalibrate(job.model, job.data.scan_batches(cfg.batch_size, cfg.calibration_batches, seed), job.device)
    reference = subset(job.model.state_dict(), sent) if proximal_mu > 0 else None
    opt_state = load_optimizer_state(job.state_dir, job.run_id, server_round) if cfg.keep_optimizer_state else None
    stats = finetune_steps(
        job.model,
        job.data.batches(cfg.batch_size, local_steps, seed, cfg.neg_ratio),
        plan,
        job.domain,
        lr,
        cfg.task_weight,
        cfg.alternate_batches,
        device=job.device,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        state=opt_state,
        proximal_mu=proximal_mu,
        reference=reference,
        per_case_domain=job.per_case_domain,
    )
    if cfg.keep_optimizer_state:
        save_optimizer_state(job.state_dir, stats["state"], job.run_id, server_round)
    local = _save_local(job, server_round)
    return subset(job.model.state_dict(), sent), _metrics(job, stats["loss"], stats["steps"], t0), local


def denoise_evaluate(job, server_round: int, full: bool = True) -> dict:
    """Phase P's evaluation on the site's validation scans (``uharmony.umsrep.training.denoise_scores``)."""
    cfg = job.cfg
    metrics = {P.NUM_EXAMPLES: len(job.data.val), P.SKIPPED: len(job.data.skipped)}
    if not job.data.val or len(job.data.val) < cfg.min_report_cases:
        return metrics
    levels, roi = cfg.noise_levels, cfg.patch_size
    scores = denoise_scores(job.model, job.data.val, cfg.noise, levels, roi, cfg.seed, job.device, full)
    return metrics | scores

"""What a train and an evaluate message mean at a site, by the kind of run: the site's side of the server's
phases (``server/phase.py``), as a table.

- ``segment``: local segmentation training (``SiteRound.segment``) and Dice evaluation (``SiteRound.evaluate``);
- ``plan``: UMS-Rep's phase F, a fine-tuning plan (``uharmony.federation.umsrep_round.finetune``), scored as
  segmentation;
- ``pretrain``: UMS-Rep's phase P, label-free denoising and its scores.

A run's phase names its site work (``pretrain``); a phase without its own (``segment``, or one a server
registered that changes only whom it asks) does segmentation's, or the plan's when the run config sets one.
A phase with its own local work registers it here (``register_site_work``, in code the ClientApp imports,
which also lets the sites' run configs name the phase).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SiteWork:
    train: Callable  # (job, server_round, lr, local_steps, proximal_mu, seed) -> (entries, metrics, local state)
    evaluate: Callable  # (job, server_round, experts) -> metrics


def _segment_train(job, server_round, lr, local_steps, proximal_mu, seed):
    return job.segment(server_round, lr, local_steps, proximal_mu, seed)


def _segment_evaluate(job, server_round, experts):
    return job.evaluate(server_round, experts=experts)


def _plan_train(job, server_round, lr, local_steps, proximal_mu, seed):
    from uharmony.federation.umsrep_round import finetune

    return finetune(job, server_round, lr, local_steps, proximal_mu, seed)


def _pretrain_train(job, server_round, lr, local_steps, proximal_mu, seed):
    from uharmony.federation.umsrep_round import pretrain

    return pretrain(job, server_round, lr, local_steps, seed)


def _pretrain_evaluate(job, server_round, experts):
    from uharmony.federation.umsrep_round import denoise_evaluate

    return denoise_evaluate(job, server_round, full=experts)  # every level and SSIM at the end only


SEGMENT = SiteWork(_segment_train, _segment_evaluate)
PLAN = SiteWork(_plan_train, _segment_evaluate)
SITE_WORK: dict[str, SiteWork] = {"pretrain": SiteWork(_pretrain_train, _pretrain_evaluate)}  # phase -> its own


def register_site_work(phase: str, work: SiteWork) -> SiteWork:
    """A phase's own local work (and its name accepted in run configs, here too)."""
    from uharmony.federation.config import accept_phase

    accept_phase(phase)
    SITE_WORK[phase] = work
    return work


def site_work(cfg) -> SiteWork:
    """The site work of a run config: its phase's own, else segmentation's (the plan's under a UMS-Rep plan)."""
    return SITE_WORK.get(cfg.phase) or (PLAN if cfg.uses_plan else SEGMENT)

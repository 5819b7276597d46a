"""One site's work for a round (Flower-free): load global + site-local state, train or evaluate.

The ClientApp turns messages into calls of this class; nothing here knows about Flower.
"""

from __future__ import annotations

import time

import torch

from . import protocol as P
from .config import RunConfig
from .data import SiteData, resolve_site
from .federated import ModelRoles, State, load_global_and_local, local_state_of, subset
from .networks import model_from_spec
from .site_state import load_local_state, save_local_state
from .training import evaluate_cases, train_steps


class SiteRound:
    """``node_config``: Flower's node config (``data-path`` + ``site-id`` at a hospital, ``partition-id`` in
    simulation); ``spec``: the server's model spec; ``saved``: the site-local state kept in memory by the
    node (else read from the site state folder); ``pooled``: train on every site's data (centralized)."""

    def __init__(
        self,
        node_config: dict,
        cfg: RunConfig,
        spec: dict,
        strategy: str,
        saved: State | None = None,
        pooled: bool = False,
    ) -> None:
        self.cfg = cfg
        self.device = cfg.torch_device
        self.site, self.state_dir, cache = resolve_site(node_config, cfg, pooled=pooled)
        torch.manual_seed(cfg.seed)  # identical initial weights at every site (matters for strategy=local)
        self.model = model_from_spec(spec)
        self.data = SiteData(
            self.site, cfg.spacing, cfg.patch_size, self.model.modalities, self.model.regions, cache_dir=cache
        )
        self.roles = ModelRoles(self.model, strategy)
        self.pooled = pooled
        if saved is None:  # a restarted node: the site-local entries from the site state folder
            on_disk = load_local_state(self.state_dir)
            saved = on_disk[0] if on_disk else None
        self.saved = saved

    @property
    def domain(self) -> int | None:
        """The expert this site trains; a pooled site trains each case's own domain's expert."""
        if not self.model.gated:
            return None
        return "domain" if self.pooled else self.site.domain

    def load(self, global_state: State) -> None:
        load_global_and_local(self.model, self.roles, global_state, self.saved)

    def train(
        self, server_round: int, lr: float, local_steps: int, proximal_mu: float, seed: int
    ) -> tuple[State, dict, State]:
        """Returns (entries to send, metrics, new local state). ``seed``: the round's, from the server."""
        t0 = time.time()
        sent_keys = self.roles.outgoing_keys(self.domain if isinstance(self.domain, int) else None)
        if self.pooled:  # one trainer holds every domain: it sends every domain's head parts
            sent_keys = self.roles.global_keys()
        reference = subset(self.model.state_dict(), sent_keys) if proximal_mu > 0 else None
        seed = seed + self.site.domain
        torch.manual_seed(seed)
        stats = train_steps(
            self.model,
            self.data.batches(self.cfg.batch_size, local_steps, seed, self.cfg.neg_ratio),
            self.domain,
            lr,
            proximal_mu,
            reference,
            device=self.device,
            optimizer=self.cfg.optimizer,
        )
        self.model.cpu()
        local = local_state_of(self.model, self.roles)
        save_local_state(self.state_dir, local, {"round": server_round, "site": self.site.name})
        metrics = {
            P.TRAIN_LOSS: stats["loss"],
            P.STEPS: stats["steps"],
            P.SECONDS: time.time() - t0,
            P.NUM_EXAMPLES: self.data.num_train_cases,
            P.SKIPPED: len(self.data.skipped),
        }
        return subset(self.model.state_dict(), sent_keys), metrics, local

    def evaluate(self) -> dict:
        """Per-region Dice and HD95 of the loaded model on the site's validation cases, with the site's own
        expert (``oracle``) and with the gate (``gated``: dataset-free); NaN where a region is not annotated."""
        metrics = {P.NUM_EXAMPLES: len(self.data.val), P.SKIPPED: len(self.data.skipped)}
        if not self.data.val or len(self.data.val) < self.cfg.min_report_cases:
            return metrics  # too few cases: an average over them would describe single patients
        modes = {"oracle": self.site.domain, "gated": None} if self.model.gated else {"oracle": None}
        for mode, dom in modes.items():
            for k, v in evaluate_cases(self.model, self.data.val, dom, self.cfg.patch_size, self.device).items():
                metrics[f"{k}-{mode}"] = v
        if not self.model.gated:  # one head: dataset-free and oracle coincide
            metrics.update(
                {k.replace("-oracle", "-gated"): v for k, v in list(metrics.items()) if k.endswith("-oracle")}
            )
        return metrics

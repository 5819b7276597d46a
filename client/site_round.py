"""One site's work for a round (Flower-free): load global + site-local state, train or evaluate."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from uharmony import model_from_spec
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, load_global_and_local, local_state_of, to_numpy
from uharmony.training import evaluate_cases, train_steps

from .data import resolve_site, site_data
from .site_state import load_local_state, save_local_state


class SiteRound:
    def __init__(self, node_config: dict, cfg: RunConfig, spec_json: str, strategy: str,
                 saved: dict[str, torch.Tensor] | None = None, device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = device
        self.site, self.state_dir = resolve_site(node_config, cfg)
        torch.manual_seed(cfg.seed)  # identical initial weights at every site (matters for strategy=local)
        self.model = model_from_spec(json.loads(spec_json))
        self.data = site_data(self.site, cfg, self.model.modalities, self.model.regions)
        self.roles = ModelRoles(self.model, strategy)
        self.strategy = strategy
        # site-local entries: from the node's in-memory state, else from the site state folder (restart)
        if saved is None:
            on_disk = load_local_state(self.state_dir)
            saved = on_disk[0] if on_disk else None
        self.saved = saved

    @property
    def domain(self) -> int | None:
        return self.site.domain if self.model.gated else None

    def load(self, global_arrays: dict[str, np.ndarray]) -> None:
        load_global_and_local(self.model, self.roles, global_arrays, self.saved)

    def train(self, server_round: int, lr: float, local_steps: int, proximal_mu: float) -> tuple[dict, dict, dict]:
        """Returns (arrays to send, metrics, new local state)."""
        t0 = time.time()
        reference = None
        if proximal_mu > 0:
            reference = {k: v.detach().clone().to(self.device) for k, v in self.model.state_dict().items()
                         if k in set(self.roles.outgoing_keys(self.domain))}
        seed = self.cfg.seed * 100_003 + server_round * 1009 + self.site.domain
        torch.manual_seed(seed)
        stats = train_steps(self.model, self.data.batches(self.cfg.batch_size, local_steps, seed, self.cfg.neg_ratio),
                            self.domain, lr, proximal_mu, reference, device=self.device,
                            optimizer=self.cfg.optimizer)
        self.model.cpu()
        local = local_state_of(self.model, self.roles)
        save_local_state(self.state_dir, local, {"round": server_round, "site": self.site.name})
        out = to_numpy(self.model.state_dict(), self.roles.outgoing_keys(self.domain))
        metrics = {"train-loss": stats["loss"], "steps": stats["steps"], "seconds": time.time() - t0,
                   "num-examples": self.data.num_train_cases, "skipped-cases": len(self.data.skipped)}
        return out, metrics, local

    def evaluate(self) -> dict:
        metrics = {"num-examples": len(self.data.val), "skipped-cases": len(self.data.skipped)}
        if not self.data.val:
            return metrics
        modes = {"oracle": self.site.domain, "gated": None} if self.model.gated else {"oracle": None}
        for mode, dom in modes.items():
            for k, v in evaluate_cases(self.model, self.data.val, dom, self.cfg.patch_size, self.device).items():
                metrics[f"{k}-{mode}"] = v
        if not self.model.gated:  # one head: dataset-free and oracle coincide
            metrics.update({k.replace("-oracle", "-gated"): v for k, v in list(metrics.items()) if k.endswith("-oracle")})
        return metrics

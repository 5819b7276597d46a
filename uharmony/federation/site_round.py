"""One site's work for a round (Flower-free): load global + site-local state, train or evaluate.

The ClientApp turns messages into calls of this class; nothing here knows about Flower.

A hospital sets its own privacy floor: its node config (``site.toml``) key ``min-report-cases`` raises the
run's (the coordinator's) ``min-report-cases`` and cannot be lowered by it; no evaluation metric and no train
loss leaves over fewer cases (:func:`report_floor`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from uharmony import protocol as P
from uharmony.data import SiteData, resolve_site
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, State, load_global_and_local, local_state_of, subset
from uharmony.federation.site_state import (
    load_local_state,
    load_optimizer_state,
    save_local_state,
    save_optimizer_state,
)
from uharmony.federation.site_work import site_work
from uharmony.files import atomic_write, read_jsonl
from uharmony.model.gating import gate_decisions, set_prototypes, uses_scan_gate
from uharmony.model.networks import model_from_spec
from uharmony.model.training import evaluate_cases, train_steps

SITE_FLOOR = "min-report-cases"  # the node config's key of the site's own privacy floor


def report_floor(node_config: dict, cfg: RunConfig) -> int:
    """The fewest cases a number the site sends may describe: the larger of the run's ``min-report-cases`` and
    the site's own (node config ``min-report-cases``, default 1), which the coordinator cannot lower."""
    raw = node_config.get(SITE_FLOOR, 1)
    whole = isinstance(raw, int) and not isinstance(raw, bool) or isinstance(raw, str) and raw.strip().isdigit()
    if not whole or int(raw) < 1:
        raise ValueError(f"node config: {SITE_FLOOR!r} must be a whole number >= 1, got {str(raw)[:40]!r}")
    return max(cfg.min_report_cases, int(raw))


class SiteRound:
    """``node_config``: Flower's node config (``data-path`` + ``site-id`` at a hospital, ``partition-id`` in
    simulation); ``spec``: the server's model spec; ``saved``: the site-local state kept in memory by the
    node (else read from the site state folder); ``pooled``: train on every site's data (centralized);
    ``before_round``: the message's round plus one for evaluation, its round for training: the site starts
    from the state it wrote before that round (a round redone after a server crash counts once)."""

    def __init__(
        self,
        node_config: dict,
        cfg: RunConfig,
        spec: dict,
        strategy: str,
        saved: State | None = None,
        pooled: bool = False,
        run_id: str = "",
        before_round: int | None = None,
    ) -> None:
        cfg = dataclasses.replace(cfg, min_report_cases=report_floor(node_config, cfg))  # the site's floor
        self.cfg, self.run_id, self.before_round = cfg, run_id, before_round
        self.device = cfg.torch_device
        self.site, self.state_dir, cache = resolve_site(node_config, cfg, pooled=pooled)
        torch.manual_seed(cfg.weights_seed)  # identical initial weights at every site (matters for strategy=local)
        self.model = model_from_spec(spec)
        self.data = SiteData(
            self.site,
            cfg.spacing,
            cfg.patch_size,
            self.model.modalities,
            self.model.regions,
            cache_dir=cache,
            types=self.model.spec.get("types", ()),
        )
        self.roles = ModelRoles(self.model, strategy)
        self.pooled = pooled
        if saved is None:  # a restarted node: the site-local entries from the site state folder, if this run's
            on_disk = load_local_state(self.state_dir, before_round)
            saved = on_disk[0] if on_disk and on_disk[1].get("run", "") == run_id else None
        self.saved = saved

    @property
    def domain(self) -> int | None:
        """The expert this site trains (None: no gated head, or a pooled site: see ``per_case_domain``)."""
        return self.site.domain if self.model.gated and not self.pooled else None

    @property
    def per_case_domain(self) -> bool:
        """A pooled site (centralized training) trains each case's own domain's expert."""
        return self.model.gated and self.pooled

    def load(self, global_state: State) -> None:
        load_global_and_local(self.model, self.roles, global_state, self.saved)

    def train(
        self, server_round: int, lr: float, local_steps: int, proximal_mu: float, seed: int
    ) -> tuple[State, dict, State]:
        """Returns (entries to send, metrics, new local state): the run's site work (``site_work.py``: segmentation,
        a UMS-Rep plan or phase P's denoising). ``seed``: the round's, from the server."""
        seed = seed + self.site.domain
        torch.manual_seed(seed)
        return site_work(self.cfg).train(self, server_round, lr, local_steps, proximal_mu, seed)

    def segment(
        self, server_round: int, lr: float, local_steps: int, proximal_mu: float, seed: int
    ) -> tuple[State, dict, State]:
        """Local segmentation training (``train``'s work in a segmentation run)."""
        t0 = time.time()
        sent_keys = self.roles.outgoing_keys(self.domain)
        if self.pooled:  # one trainer holds every domain: it sends every domain's head parts
            sent_keys = self.roles.global_keys()
        reference = subset(self.model.state_dict(), sent_keys) if proximal_mu > 0 else None
        opt_state = (
            load_optimizer_state(self.state_dir, self.run_id, server_round) if self.cfg.keep_optimizer_state else None
        )
        if self.model.gated:
            self.model.head.expert_dropout = self.cfg.expert_dropout
        stats = train_steps(
            self.model,
            self.data.batches(self.cfg.batch_size, local_steps, seed, self.cfg.neg_ratio),
            self.domain,
            lr,
            proximal_mu,
            reference,
            device=self.device,
            weight_decay=self.cfg.weight_decay,
            optimizer=self.cfg.optimizer,
            state=opt_state,
            residual_weight_decay=None if self.cfg.residual_weight_decay < 0 else self.cfg.residual_weight_decay,
            autocast_dtype=self.cfg.autocast_dtype,
            channels_last=self.cfg.channels_last,
            per_case_domain=self.per_case_domain,
        )
        if self.cfg.keep_optimizer_state:
            save_optimizer_state(self.state_dir, stats["state"], self.run_id, server_round)
        self.model.cpu()
        local = local_state_of(self.model, self.roles)
        save_local_state(self.state_dir, local, {"round": server_round, "site": self.site.name, "run": self.run_id})
        metrics = {
            P.TRAIN_LOSS: stats["loss"],
            P.STEPS: stats["steps"],
            P.SECONDS: time.time() - t0,
            P.NUM_EXAMPLES: self.data.num_train_cases,
            P.SKIPPED: len(self.data.skipped),
        }
        return subset(self.model.state_dict(), sent_keys), self.withhold(metrics), local

    def withhold(self, metrics: dict) -> dict:
        """``metrics`` of a train reply without the train loss when it would describe fewer training cases than
        the site's privacy floor (``min-report-cases``)."""
        if self.data.num_train_cases < self.cfg.min_report_cases:
            return {k: v for k, v in metrics.items() if k != P.TRAIN_LOSS}
        return metrics

    def prototypes(self) -> tuple[State, dict]:
        """The site's domain prototype (every domain's it holds when pooled) from its training scans under the
        loaded (aggregated) model: the prototype entries of the state dict, and metrics."""
        if not uses_scan_gate(self.model):
            raise ValueError("prototypes: the model has no scan-gated head")
        t0 = time.time()
        domains = (
            [int(it["domain"]) for it in self.data.train] if self.pooled else [self.site.domain] * len(self.data.train)
        )
        used = set_prototypes(self.model, self.data.train, domains, self.cfg.patch_size, self.device)
        keys = [k for d in used for k in self.roles.prototypes[d]]
        return subset(self.model.state_dict(), keys), {P.NUM_EXAMPLES: sum(used.values()), P.SECONDS: time.time() - t0}

    def evaluate(self, server_round: int = 0, experts: bool = False) -> dict:
        """Per-region Dice and HD95 of the loaded model on the site's validation cases, with the site's own
        expert (``oracle``) and with the gate (``gated``: dataset-free); NaN where a region is not annotated.
        ``experts``: a gated model's every domain expert too (``expert<d>``: the cross-site table).

        Per-case Dice goes to ``cases.jsonl`` in the site state folder: it stays at the site (no
        single-patient figure leaves it)."""
        metrics = {P.NUM_EXAMPLES: len(self.data.val), P.SKIPPED: len(self.data.skipped)}
        if not self.data.val or len(self.data.val) < self.cfg.min_report_cases:
            return metrics  # too few cases: an average over them would describe single patients
        modes = {"oracle": self.site.domain, "gated": None} if self.model.gated else {"oracle": None}
        if experts and self.model.gated:
            modes.update({P.expert_mode(d): d for d in range(len(self.model.head.experts)) if d != self.site.domain})
        gate = None
        if uses_scan_gate(self.model):  # one gate decision per scan, reused by the gated evaluation
            gate, summary = gate_decisions(
                self.model, self.data.val, self.site.domain, self.cfg.patch_size, self.device
            )
            metrics.update({P.GATE_ACCURACY: summary["gate-accuracy"], P.GATE_WEIGHT: summary["gate-weight"]})
            metrics[P.GATE_UNSEEN] = summary["gate-unseen"]
        cases: list[dict] = []
        for mode, dom in modes.items():
            first = len(cases)
            scores = evaluate_cases(
                self.model,
                self.data.val,
                dom,
                self.cfg.patch_size,
                self.device,
                gate_weights=gate if dom is None else None,
                per_case=cases,
                autocast_dtype=self.cfg.autocast_dtype,
                channels_last=self.cfg.channels_last,
            )
            for rec in cases[first:]:
                rec.update(round=server_round, mode=mode, site=self.site.name, run=self.run_id)
            metrics.update({f"{k}-{mode}": v for k, v in scores.items()})
        if "presence" in self.model.tasks:  # UMS-Rep's image-level head (dataset-free: no domain involved)
            from uharmony.umsrep.training import presence_accuracy

            scores = presence_accuracy(
                self.model, self.data.val, self.cfg.patch_size, self.cfg.seed, device=self.device
            )
            metrics.update({f"{k}-gated": v for k, v in scores.items()})
        if "tumour-type" in self.model.tasks:  # the scan-level second task: accuracy over the typed scans
            from uharmony.umsrep.type_task import type_accuracy

            scores = type_accuracy(self.model, self.data.val, self.cfg.patch_size, self.cfg.seed, device=self.device)
            metrics[P.TYPE_CASES] = scores["type-cases"]
            if scores["type-cases"] >= max(1, self.cfg.min_report_cases):  # the site's floor; never a nan
                metrics[P.TYPE_ACCURACY] = scores["type-accuracy"]
        _file_cases(Path(self.state_dir) / "cases.jsonl", cases)
        if not self.model.gated:  # one head: dataset-free and oracle coincide
            metrics.update(
                {k.replace("-oracle", "-gated"): v for k, v in list(metrics.items()) if k.endswith("-oracle")}
            )
        return metrics


def _file_cases(path: Path, cases: list[dict]) -> None:
    """Add per-case records, replacing those of the same run, round and mode (an evaluation redone after a
    restart files its cases once)."""
    if not cases:
        return
    redone = {(c["run"], c["round"], c["mode"]) for c in cases}
    kept = [r for r in read_jsonl(path) if (r.get("run"), r.get("round"), r.get("mode")) not in redone]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept + cases))

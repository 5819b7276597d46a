"""The round engine: the one loop every run goes through, whatever carries its messages.

Before each round it admits the SuperNodes that joined (``server/admission.py``), growing the model for
a new site's modality, label class or domain and evaluating every site on the grown model before
anyone trains on it. Then it trains (the strategy table's Flower strategy configures the round, every
reply is screened, the role-aware strategy aggregates), evaluates on its schedule, logs and
checkpoints. It can resume from a checkpoint, continuing the round count.

The transport is a Flower ``Grid``: the SuperLink's in a deployment or ``flwr run``, Flower's simulation
engine, or ``simulation.inprocess.InProcessGrid`` (the benchmark's): the same rounds in every case.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from uharmony import protocol as P
from uharmony.adaptation import declare_expert_regions, spec_extends
from uharmony.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, extend_global_model, global_state_of, model_needs
from uharmony.gating import uses_scan_gate
from uharmony.networks import model_from_spec
from uharmony.runlog import RunLog
from uharmony.signing import load_private_key
from uharmony.training import round_lr

from .admission import Admission, BadProfile, check_regions
from .aggregation import build_strategy
from .privacy import PrivacyLedger
from .prototypes import refresh_prototypes
from .registry import SiteRegistry
from .replies import RejectedUpdate, ReplyChecker, check_evaluation

log = logging.getLogger("uharmony.server")


def say(text: str) -> None:
    print(f"[uharmony] {text}", flush=True)


def round_seed(cfg: RunConfig, server_round: int) -> int:
    """The seed of a round's local training (each site adds its domain id)."""
    return cfg.seed * 100_003 + server_round * 1009


class MembersGrid(Grid):
    """The run's grid seen through a set of nodes, so that Flower's strategies sample only those."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self._grid, self._nodes = grid, list(node_ids)

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        return self._grid.send_and_receive(messages, timeout=timeout)


class RoundEngine:
    def __init__(self, grid: Grid, cfg: RunConfig) -> None:
        self.grid, self.cfg, self.spec = grid, cfg, cfg.strategy_spec
        self.run_dir = Path(cfg.run_dir)
        self.runlog = RunLog(self.run_dir)
        registry = SiteRegistry(Path(cfg.site_registry)) if cfg.site_registry else None
        self.admission = Admission(registry, cfg.profile_timeout)
        self.model, self.strategy, self.start = None, None, 1
        self.norm_history: list[float] = []  # accepted update norms (bounds updates when a round has 1-2 replies)
        self.ledger = (
            PrivacyLedger(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_max_epsilon)
            if cfg.dp_noise_multiplier > 0
            else None
        )
        self.stop_reason = ""
        self.run_id = uuid.uuid4().hex  # a resumed run keeps its checkpoint's
        self.signer = load_private_key(cfg.model_signing_key) if cfg.model_signing_key else None
        if cfg.resume:
            self._resume()
        (self.run_dir / "config.json").write_text(json.dumps(cfg.to_flwr(), indent=2))

    # -- the model ------------------------------------------------------------------------------
    def _use(self, model, state=None) -> None:
        roles = ModelRoles(model, self.cfg.strategy)
        state = global_state_of(model, roles) if state is None else state
        if set(state) != set(roles.global_keys()):
            raise CheckpointError(f"checkpoint entries do not fit a {self.cfg.strategy!r} model of this spec")
        self.model, self.roles = model, roles
        if self.strategy is None:
            self.outer, self.strategy = build_strategy(self.cfg, roles, state)
        self.strategy.attach(roles, state)

    def _resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "checkpoints")
        base = self.cfg.build_model(max(1, self.cfg.num_domains)).spec
        if not spec_extends(base, ckpt["spec"]) or ckpt["extra"].get("strategy") != self.cfg.strategy:
            raise CheckpointError(
                f"{self.run_dir / 'checkpoints'}: model spec or strategy differs from this run's "
                "configuration; refusing to resume"
            )
        self._use(model_from_spec(ckpt["spec"]), ckpt["state"])  # grown by the joins before the checkpoint
        self.norm_history = [float(x) for x in ckpt["extra"].get("update-norms", [])]
        if self.ledger is not None and "privacy" in ckpt["extra"]:
            self.ledger = PrivacyLedger(
                self.cfg.dp_noise_multiplier, self.cfg.dp_delta, self.cfg.dp_max_epsilon, ckpt["extra"]["privacy"]
            )
        self.start = ckpt["round"] + 1
        self.run_id = str(ckpt["extra"].get("run-id", self.run_id))
        say(f"resuming from {self.run_dir / 'checkpoints'} after round {ckpt['round']}")

    @property
    def state(self):
        return self.strategy.global_state

    def _base_config(self) -> dict:
        return {P.MODEL_SPEC: json.dumps(self.model.spec), P.STRATEGY: self.cfg.strategy, P.RUN_ID: self.run_id}

    # -- admission ------------------------------------------------------------------------------
    def admit(self, rnd: int) -> list[str]:
        """Admit the SuperNodes that joined since the last round; returns the sites that grew the model."""
        cfg = self.cfg
        if not self.admission.members:
            self.admission.wait_for_nodes(self.grid, cfg.min_sites, cfg.round_timeout)
        ready, events = self.admission.candidates(self.grid, rnd)
        for event in events:
            self.runlog.write({"round": rnd, **event})
        if self.model is None:
            if not ready:
                reasons = "; ".join(e.get("reason", e["event"]) for e in events) or "no SuperNode connected"
                raise RuntimeError(f"round {rnd}: no site could be admitted ({reasons})")
            # one expert per domain of the sites present now (joining sites add theirs)
            self._use(cfg.build_model(cfg.num_domains or (1 + max(p["domain"] for _, p in ready))))
            first = True
        else:
            first = False
        grew = []
        for node, prof in ready:
            try:
                check_regions(prof, self.model.regions)
            except BadProfile as exc:
                reason = self.admission.refuse(node, str(exc))
                self.runlog.write(
                    {"round": rnd, "event": "join-refused", "node": node, "site": prof["site"], "reason": reason}
                )
                continue
            domain = prof["domain"] if self.model.gated else None
            needs = model_needs(self.model, prof["modalities"], prof["regions"], domain)
            if any(needs.values()):
                why = (
                    "extend-on-join is false"
                    if not cfg.extend_on_join
                    else f"strategy {cfg.strategy!r} has no global model to extend"
                    if not self.roles.global_keys()
                    else None
                )
                if why:
                    reason = self.admission.refuse(node, f"site {prof['site']} needs {needs} but {why}")
                    self.runlog.write(
                        {"round": rnd, "event": "join-refused", "node": node, "site": prof["site"], "reason": reason}
                    )
                    say(f"round {rnd}: refused site {prof['site']}: {reason}")
                    continue
                model, _, state, needs = extend_global_model(
                    self.model.spec, self.state, cfg.strategy, prof["modalities"], prof["regions"], domain
                )
                self._use(model, state)
                grew.append(prof["site"])
            self.admission.admit(node, prof)
            self.runlog.write(
                {
                    "round": rnd,
                    "event": "join",
                    "node": node,
                    "added": needs,
                    **{k: prof[k] for k in ("site", "domain", "modalities", "regions", "train_cases")},
                    "model": {k: self.model.spec[k] for k in ("modalities", "regions", "num_domains")},
                }
            )
            added = ", ".join(f"{k} {v}" for k, v in needs.items() if v)
            say(
                f"round {rnd}: site {prof['site']} joined (domain {prof['domain']})"
                + (f"; model extended: {added}" if added else "")
            )
        if first and self.model.gated:  # each starting expert knows what its domain's sites annotate
            declare_expert_regions(self.model, [self.admission.members[n] for n in self.admission.members])
        return grew

    def members(self) -> list[int]:
        """Admitted nodes that are online now, ordered by domain and site."""
        online = self.admission.online_members(self.grid)
        return sorted(online, key=lambda n: (self.admission.members[n]["domain"], self.admission.members[n]["site"], n))

    # -- one round ------------------------------------------------------------------------------
    def train(self, rnd: int) -> dict:
        cfg, members = self.cfg, self.members()
        trainers = members[:1] if self.spec.pooled else members  # pooled: one node trains on every site's data
        steps = cfg.local_steps * (len(members) if self.spec.pooled else 1)
        info = {"sites": [], "rejected": [], P.TRAIN_LOSS: None}
        if not trainers:
            say(f"round {rnd}: no admitted site is online; the global model is unchanged")
            return info
        config = ConfigRecord(
            {
                **self._base_config(),
                P.LR: round_lr(cfg.lr, rnd, cfg.num_server_rounds, cfg.lr_schedule),
                P.LOCAL_STEPS: steps,
                P.SEED: round_seed(cfg, rnd),
                P.POOLED: self.spec.pooled,
            }
        )
        messages = self.outer.configure_train(rnd, ArrayRecord(self.state), config, MembersGrid(self.grid, trainers))
        replies = self.grid.send_and_receive(messages, timeout=cfg.round_timeout)
        checker = ReplyChecker(
            self.roles,
            self.state,
            {n: self.admission.members[n] for n in members},
            cfg.update_norm_factor,
            cfg.max_relative_update,
            self.spec.pooled,
            self.norm_history,
            reject_unchanged=self.ledger is not None,
        )
        accepted, parsed, rejected = checker.screen(replies)
        for r in rejected:
            log.warning("round %d: rejected reply from node %s: %s", rnd, r["node"], r["reason"])
        info.update(
            sites=[r.site for r in parsed],
            rejected=rejected,
            **{
                "update-bytes": {r.site: r.metrics.get(P.UPDATE_BYTES) for r in parsed},
                "skipped-cases": {r.site: r.metrics.get(P.SKIPPED) for r in parsed},
            },
        )
        if len(accepted) < max(1, cfg.min_sites):
            say(f"round {rnd}: {len(accepted)} usable replies (< {max(1, cfg.min_sites)}): global model unchanged")
            return info
        if self.ledger is not None:
            if self.ledger.would_exceed(len(accepted)):
                self.stop_reason = (
                    f"differential privacy: this round would spend more than dp-max-epsilon "
                    f"{cfg.dp_max_epsilon} (spent {self.ledger.spent()['epsilon']})"
                )
                say(f"round {rnd}: {self.stop_reason}; the global model is unchanged and the run stops")
                return {**info, "dp-stopped": True}
            self.outer.num_sampled_clients = len(accepted)  # the noise is scaled by the replies it averages
        arrays, metrics = self.outer.aggregate_train(rnd, accepted)
        if arrays is not None:  # the DP wrapper adds its noise to what the role-aware strategy returned
            new = arrays.to_torch_state_dict()
            self.strategy.global_state = {k: new[k].to(v.dtype) for k, v in self.state.items()}
            if self.ledger is not None:
                info["privacy"] = self.ledger.spend(len(accepted))
        info[P.TRAIN_LOSS] = metrics.get(P.TRAIN_LOSS) if metrics else None
        return info

    def refresh_prototypes(self, rnd: int) -> None:
        """The scan gate's prototypes under the model just aggregated (``server/prototypes.py``)."""
        members = self.members()
        if not members or not uses_scan_gate(self.model):
            return
        asked = members[:1] if self.spec.pooled else members
        pooled = sum(self.admission.members[n]["train_cases"] for n in members) if self.spec.pooled else 0
        config = {**self._base_config(), P.SERVER_ROUND: rnd, P.POOLED: self.spec.pooled}
        state, rejected, _ = refresh_prototypes(
            self.grid,
            {n: self.admission.members[n] for n in asked},
            self.roles,
            self.state,
            config,
            self.cfg.round_timeout,
            pooled,
        )
        self.strategy.attach(self.roles, state)
        for r in rejected:
            log.warning("round %d: prototype reply from node %s rejected: %s", rnd, r["node"], r["reason"])
        if rejected:
            self.runlog.write({"round": rnd, "event": "prototypes-rejected", "rejected": rejected})

    def evaluate(self, rnd: int, **tags) -> dict:
        """Every admitted site evaluates the current global model; logs one line per site and region and
        returns the mean Dice per mode over sites (and each site's mean, under ``"sites"``)."""
        members = self.members()
        if not members:
            return {}
        config = ConfigRecord({**self._base_config(), P.SEED: self.cfg.seed})
        messages = self.outer.configure_evaluate(rnd, ArrayRecord(self.state), config, MembersGrid(self.grid, members))
        per_site, rejected = {}, []
        for msg in self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout):
            node = msg.metadata.src_node_id
            try:
                if node not in members:
                    raise RejectedUpdate(f"node {node} is not a member of this run")
                site, metrics = check_evaluation(msg, self.admission.members[node], self.model.regions)
                per_site[site] = metrics
            except RejectedUpdate as exc:
                log.warning("round %d: evaluation reply from node %s rejected: %s", rnd, node, exc)
                rejected.append({"node": node, "reason": str(exc)})
        if rejected:
            self.runlog.write({"round": rnd, "event": "evaluation-rejected", "rejected": rejected, **tags})
        return self.runlog.evaluation(rnd, self.cfg.strategy, per_site, **tags)

    # -- the run --------------------------------------------------------------------------------
    def _checkpoint(self, rnd: int, **kw) -> Path:
        extra = {
            "strategy": self.cfg.strategy,
            "run-id": self.run_id,
            "update-norms": self.norm_history[-50:],
            **({"privacy": self.ledger.state_dict()} if self.ledger is not None else {}),
        }
        folder = self.run_dir / ("checkpoints" if "name" not in kw else "")
        return save_checkpoint(folder, rnd, self.model.spec, self.state, extra, signer=self.signer, **kw)

    def run(self) -> dict:
        cfg, summary, rnd = self.cfg, {}, self.start - 1
        say(
            f"strategy={cfg.strategy} ({self.spec.summary}) arch={cfg.arch} norm={cfg.model_norm} head={cfg.head} "
            f"rounds {self.start}..{cfg.num_server_rounds}; run folder {self.run_dir}"
        )
        for rnd in range(self.start, cfg.num_server_rounds + 1):
            t0 = time.time()
            grew = self.admit(rnd)
            if grew and rnd > 1:  # a trained model grew: check every site on it before anyone trains
                s = self.evaluate(rnd - 1, phase="after-extension", joined=grew)
                say(f"evaluation after extension for {', '.join(grew)}: {_dice_line(s)}")
            info = self.train(rnd)
            full = sum(v.numel() * v.element_size() for v in self.model.state_dict().values())
            self.runlog.write(
                {
                    "round": rnd,
                    "event": "train",
                    "strategy": cfg.strategy,
                    "full-model-bytes": full,
                    "seconds": round(time.time() - t0, 2),
                    **info,
                }
            )
            loss = info[P.TRAIN_LOSS]
            line = (
                f"round {rnd}/{cfg.num_server_rounds}: train loss {'-' if loss is None else round(loss, 4)}, "
                f"{len(info['sites'])} sites, {len(info['rejected'])} rejected"
            )
            if "privacy" in info:
                line += f", epsilon {info['privacy']['epsilon']} at delta {info['privacy']['delta']:g}"
            if self.stop_reason or rnd % cfg.eval_every == 0 or rnd == cfg.num_server_rounds:
                self.refresh_prototypes(rnd)
                summary = self.evaluate(rnd)
                line += f" | {_dice_line(summary)}"
            self._checkpoint(rnd)
            say(f"{line} ({time.time() - t0:.1f} s)")
            if self.stop_reason:
                break
        final = self._checkpoint(rnd, name="final_model.pt")
        png = self.runlog.plot()
        means = {k: v for k, v in summary.items() if k in ("oracle", "gated")}
        done = {"event": "done", "rounds": rnd, "final-mean-dice": means}
        if "gate-accuracy" in summary:
            done["gate-accuracy"] = summary["gate-accuracy"]
        if self.ledger is not None:
            done["privacy"] = self.ledger.spent()
        if self.stop_reason:
            done["stopped"] = self.stop_reason
        self.runlog.write(done)
        say(f"done: {final}, metrics {self.runlog.path}, plot {png}")
        return {"run_dir": str(self.run_dir), "summary": means}


def _dice_line(summary: dict) -> str:
    modes = ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k in ("oracle", "gated"))
    sites = "; ".join(
        f"site {s} " + "/".join(f"{v:.2f}" for v in per.values()) for s, per in summary.get("sites", {}).items()
    )
    gate = f", gate right on {summary['gate-accuracy']:.0%} of scans" if "gate-accuracy" in summary else ""
    return f"mean Dice {modes}{gate}" + (f" [{sites}]" if sites else "")


def run_server(grid: Grid, run_config: dict, overrides: dict | None = None) -> dict:
    """Run the rounds of one run; returns ``{"run_dir", "summary"}``."""
    return RoundEngine(grid, RunConfig.from_flwr({**dict(run_config), **(overrides or {})})).run()

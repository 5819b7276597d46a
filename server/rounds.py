"""The round engine: the one loop every run goes through, whatever carries its messages.

Before each round it admits the SuperNodes that joined (``server/admission.py``), growing the model for
a new site's modality, label class or domain and evaluating every site on the grown model before anyone
trains on it. Then it trains (the strategy table's Flower strategy configures the round, every reply is
screened, the role-aware strategy aggregates), evaluates on its schedule, logs and checkpoints. It can
resume from a checkpoint, continuing the round count.

The transport is a Flower ``Grid``: the SuperLink's in a deployment or ``flwr run``, Flower's simulation
engine, or ``simulation.inprocess.InProcessGrid`` (the benchmark's): the same rounds in every case.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from server import evaluation, joins, pretraining  # noqa: F401 - pretraining registers UMS-Rep's phase P
from server.admission import Admission, check_binding
from server.aggregation import build_strategy
from server.evaluation import dice_line
from server.grids import MembersGrid, PackingGrid, gather, quorum
from server.phase import check_plans, make_phase, plans_record
from server.privacy import PrivacyLedger
from server.prototypes import refresh_prototypes
from server.registry import SiteRegistry
from server.replies import ReplyChecker
from uharmony import protocol as P
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, global_state_of
from uharmony.model.adaptation import spec_differences, spec_extends
from uharmony.model.gating import uses_scan_gate
from uharmony.model.networks import model_from_spec
from uharmony.model.training import scheduled_lr
from uharmony.records.checkpoint import CheckpointError, inference_settings, load_checkpoint, save_checkpoint
from uharmony.records.runlog import RunLog, no_training_reasons
from uharmony.records.signing import load_private_key
from uharmony.records.tracking import TensorBoard, write_run_info

log = logging.getLogger("uharmony.server")


def say(text: str) -> None:
    print(f"[uharmony] {text}", flush=True)


def round_seed(cfg: RunConfig, server_round: int) -> int:
    """The seed of a round's local training (each site adds its domain id)."""
    return cfg.weights_seed * 100_003 + server_round * 1009


class RoundEngine:
    say = staticmethod(say)

    def __init__(self, grid: Grid, cfg: RunConfig) -> None:
        self.grid, self.cfg, self.spec = grid, cfg, cfg.strategy_spec
        self.run_dir = Path(cfg.run_dir)
        registry = SiteRegistry(Path(cfg.site_registry)) if cfg.site_registry else None
        check_binding(grid, registry, cfg.allow_unregistered)  # keyed nodes need the registry's key -> site binding
        self.admission = Admission(registry, cfg.profile_timeout, cfg.allow_unregistered)
        self.late: dict[str, int] = {}  # site -> rounds in which it answered after the stragglers' grace
        self.model, self.strategy, self.start = None, None, 1
        self.norm_history: list[float] = []  # accepted update norms (bounds updates when a round has 1-2 replies)
        self.ledger = (
            PrivacyLedger(cfg.dp_noise_multiplier, cfg.dp_delta, cfg.dp_max_epsilon)
            if cfg.dp_noise_multiplier > 0
            else None
        )
        self.stop_reason = ""
        self.phase = make_phase(cfg)  # segmentation, UMS-Rep's phase P, ... (server/phase.py)
        self.summary: dict = {}  # the last evaluation's
        self.updated_rounds = 0  # rounds whose replies changed the global model (a run with none failed)
        self.pending = 0  # a round whose model the sites evaluate at the start of the next train message
        self.run_id = cfg.run_id or uuid.uuid4().hex  # a resumed run keeps its checkpoint's
        self.signer = load_private_key(cfg.model_signing_key) if cfg.model_signing_key else None
        self.tensorboard = TensorBoard(self.run_dir) if cfg.tensorboard else None
        resumed = self._resume() if cfg.resume else None
        self.runlog = RunLog(self.run_dir, self.run_id)
        if resumed is not None:
            moved = self.runlog.supersede(self.resumed_records)
            if moved:
                say(f"{moved} records of the interrupted round(s) moved to metrics.interrupted.jsonl")
        write_run_info(self.run_dir, cfg.to_flwr() | {"run-id": self.run_id}, self.run_id, resumed)

    # -- the model ------------------------------------------------------------------------------
    def use(self, model, state=None) -> None:
        roles = ModelRoles(model, self.cfg.strategy)
        if state is None:
            state = global_state_of(model, roles)
            if self.model is None:  # a new run: the phase's start (phase F: the trunk of a phase-P artifact)
                state = self.phase.initial_state(self, model, state)
        if set(state) != set(roles.global_keys()):
            raise CheckpointError(f"checkpoint entries do not fit a {self.cfg.strategy!r} model of this spec")
        self.model, self.roles = model, roles
        if self.strategy is None:
            self.outer, self.strategy = build_strategy(self.cfg, roles, state)
        self.strategy.attach(roles, state)

    def _resume(self) -> int:
        """Continue from the last checkpoint; returns its round."""
        ckpt = load_checkpoint(self.run_dir / "checkpoints")
        base = self.cfg.build_model(max(1, self.cfg.num_domains)).spec
        if not spec_extends(base, ckpt["spec"]) or ckpt["extra"].get("strategy") != self.cfg.strategy:
            why = spec_differences(base, ckpt["spec"]) or f"strategy: checkpoint {ckpt['extra'].get('strategy')!r}"
            raise CheckpointError(
                f"{self.run_dir / 'checkpoints'}: differs from this run's config ({why}); not resumed"
            )
        check_plans(self.cfg, ckpt["extra"], self.run_dir / "checkpoints")
        run_id = str(ckpt["extra"].get("run-id", self.run_id))
        if self.cfg.run_id and self.cfg.run_id != run_id:
            raise CheckpointError(f"{self.run_dir / 'checkpoints'} belongs to run {run_id}, not {self.cfg.run_id}")
        self.use(model_from_spec(ckpt["spec"]), ckpt["state"])  # grown by the joins before the checkpoint
        self.norm_history = [float(x) for x in ckpt["extra"].get("update-norms", [])]
        if self.ledger is not None and "privacy" in ckpt["extra"]:
            self.ledger = PrivacyLedger(
                self.cfg.dp_noise_multiplier, self.cfg.dp_delta, self.cfg.dp_max_epsilon, ckpt["extra"]["privacy"]
            )
        self.start, self.run_id = ckpt["round"] + 1, run_id
        self.pending = int(ckpt["extra"].get("pending-evaluation", 0))
        self.updated_rounds = int(ckpt["extra"].get("updated-rounds", ckpt["round"]))  # (older: assume trained)
        self.phase.resume(ckpt["extra"])
        self.resumed_records = int(ckpt["extra"].get("records", 1 << 62))
        say(f"resuming run {run_id} from {self.run_dir / 'checkpoints'} after round {ckpt['round']}")
        return int(ckpt["round"])

    def describe(self, summary: dict) -> str:
        """An evaluation's summary as a log fragment."""
        return dice_line(summary, self.model.gated)

    @property
    def state(self):
        return self.strategy.global_state

    def base_config(self) -> dict:
        return {P.MODEL_SPEC: json.dumps(self.model.spec), P.STRATEGY: self.cfg.strategy, P.RUN_ID: self.run_id}

    # -- admission ------------------------------------------------------------------------------
    def admit(self, rnd: int) -> list[str]:
        return joins.admit(self, rnd)

    def members(self) -> list[int]:
        """Admitted nodes that are online now, ordered by domain and site."""
        online = self.admission.online_members(self.grid)
        return sorted(online, key=lambda n: (self.admission.members[n]["domain"], self.admission.members[n]["site"], n))

    # -- one round ------------------------------------------------------------------------------
    def train(self, rnd: int) -> dict:
        cfg, members = self.cfg, self.members()  # pooled: one node trains on every site's data
        trainers = members[:1] if self.spec.pooled else self.phase.trainers(self, members)
        steps = cfg.local_steps * (len(members) if self.spec.pooled else 1)
        info = {"sites": [], "rejected": [], P.TRAIN_LOSS: None}
        if not trainers:
            say(f"round {rnd}: no admitted site is online; the global model is unchanged")
            return {**info, "kept": "no admitted site was online"}
        config = ConfigRecord(
            {
                **self.base_config(),
                P.LR: self.phase.learning_rate(
                    self, rnd, scheduled_lr(cfg.lr, rnd, cfg.num_server_rounds, cfg.lr_schedule)
                ),
                P.LOCAL_STEPS: steps,
                P.SEED: round_seed(cfg, rnd),
                P.POOLED: self.spec.pooled,
                **({P.EVALUATE_FIRST: self.pending} if self.pending else {}),
            }
        )
        messages = self.outer.configure_train(rnd, ArrayRecord(self.state), config, MembersGrid(self.grid, trainers))
        replies, info["late"] = self.gather(messages, rnd, "train")
        if self.pending:  # each reply also scored the model it received, aggregated in round `pending`
            profiles = {n: self.admission.members[n] for n in members}
            found = evaluation.collect(replies, profiles, self.model.regions, P.EVALUATION, rnd)
            info["evaluated"] = {"round": self.pending, **self._file_evaluation(self.pending, *found)}
            self.pending = 0
            for msg in replies:  # what is aggregated is the train part (Flower's wrappers expect one metrics record)
                if not msg.has_error() and P.EVALUATION in msg.content:
                    del msg.content[P.EVALUATION]
        checker = ReplyChecker(
            self.roles,
            self.state,
            {n: self.admission.members[n] for n in members},
            cfg.update_norm_factor,
            cfg.max_relative_update,
            self.spec.pooled,
            self.norm_history,
            reject_unchanged=self.ledger is not None,
            sent=self.phase.sent_keys(self),
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
                "site-seconds": {r.site: r.metrics.get(P.SECONDS) for r in parsed},
                "site-loss": {r.site: r.metrics.get(P.TRAIN_LOSS) for r in parsed},
            },
        )
        if len(accepted) < max(1, cfg.min_sites):
            say(f"round {rnd}: {len(accepted)} usable replies (< {max(1, cfg.min_sites)}): global model unchanged")
            return {**info, "kept": f"{len(accepted)} usable replies < min-sites {max(1, cfg.min_sites)}"}
        weights = self.strategy.weights([r.weight for r in parsed])  # what each reply weighs in the average
        if self.ledger is not None:
            if self.ledger.would_exceed(weights):
                self.stop_reason = (
                    f"differential privacy: this round would spend more than dp-max-epsilon "
                    f"{cfg.dp_max_epsilon} (spent {self.ledger.spent()['epsilon']})"
                )
                say(f"round {rnd}: {self.stop_reason}; the global model is unchanged and the run stops")
                return {**info, "dp-stopped": True, "kept": self.stop_reason}
            self.outer.num_sampled_clients = len(accepted)  # the noise is scaled by the replies it averages
        arrays, metrics = self.outer.aggregate_train(rnd, accepted)
        if arrays is not None:  # the DP wrapper adds its noise to what the role-aware strategy returned
            self.updated_rounds += 1
            new = arrays.to_torch_state_dict()
            self.strategy.global_state = {k: new[k].to(v.dtype) for k, v in self.state.items()}
            if self.ledger is not None:
                info["privacy"] = self.ledger.spend(weights)  # the worst site's epsilon
        else:
            info["kept"] = "the aggregation returned no model"
        info[P.TRAIN_LOSS] = metrics.get(P.TRAIN_LOSS) if metrics else None
        return info

    def gather(self, messages, rnd: int, kind: str) -> tuple[list, list[str]]:
        """(replies, late sites) of ``messages``: once a quorum has replied the others get the stragglers' grace
        (``straggler-seconds``, ``server/grids.py``); a late site is counted, logged and left out this time."""
        messages = list(messages)
        replies, late_nodes = gather(
            self.grid, messages, self.cfg.round_timeout, quorum(self.cfg, len(messages)), self.cfg.straggler_seconds
        )
        late = [self.admission.members.get(n, {}).get("site", str(n)) for n in late_nodes]
        for site in late:
            self.late[site] = self.late.get(site, 0) + 1
            log.warning("round %d: site %s late for the %s message (%d times)", rnd, site, kind, self.late[site])
        if late and kind != "train":  # (a train record carries its late sites)
            self.runlog.write({"round": rnd, "event": "late", "message": kind, "sites": late})
        return replies, late

    def refresh_prototypes(self, rnd: int) -> None:
        """The scan gate's prototypes under the model just aggregated (``server/prototypes.py``)."""
        members = self.phase.evaluated(self, self.members())
        if not members or not uses_scan_gate(self.model):
            return
        asked = members[:1] if self.spec.pooled else members
        pooled = sum(self.admission.members[n]["train_cases"] for n in members) if self.spec.pooled else 0
        config = {**self.base_config(), P.SERVER_ROUND: rnd, P.POOLED: self.spec.pooled}
        state, rejected, _ = refresh_prototypes(
            self.grid,
            {n: self.admission.members[n] for n in asked},
            self.roles,
            self.state,
            config,
            self.cfg.round_timeout,
            pooled,
            send=lambda messages: self.gather(messages, rnd, "prototype")[0],
        )
        self.strategy.attach(self.roles, state)
        for r in rejected:
            log.warning("round %d: prototype reply from node %s rejected: %s", rnd, r["node"], r["reason"])
        if rejected:
            self.runlog.write({"round": rnd, "event": "prototypes-rejected", "rejected": rejected})

    def evaluate(self, rnd: int, experts: bool = False, **tags) -> dict:
        """Every admitted site evaluates the current global model (an evaluate message); logs one line per
        site and region and returns the mean Dice per mode over sites (and each site's mean, under
        ``"sites"``). ``experts``: a gated model's every expert on every site too (``cross_site.csv``)."""
        members = self.phase.evaluated(self, self.members())
        if not members:
            return {}
        experts = experts and self.model.gated
        config = ConfigRecord({**self.base_config(), P.SEED: self.cfg.seed, P.CROSS_EXPERTS: experts})
        messages = self.outer.configure_evaluate(rnd, ArrayRecord(self.state), config, MembersGrid(self.grid, members))
        replies, _ = self.gather(messages, rnd, "evaluate")
        profiles = {n: self.admission.members[n] for n in members}
        per_site, rejected = evaluation.collect(replies, profiles, self.model.regions, server_round=rnd)
        if experts or (not self.model.gated and "phase" not in tags):
            domains = {p["site"]: (p["domain"] if self.model.gated else None) for p in profiles.values()}
            evaluation.write_cross_site(self.run_dir, per_site, domains)
        return self._file_evaluation(rnd, per_site, rejected, **tags)

    def flush_pending_evaluation(self) -> None:
        """Evaluate the model of the pending round now, by message (before a join changes it)."""
        if self.pending:
            rnd, self.pending = self.pending, 0
            say(f"round {rnd} evaluated before the model grows: {self.describe(self.evaluate(rnd))}")

    def _file_evaluation(self, rnd: int, per_site: dict, rejected: list, **tags) -> dict:
        if rejected:
            self.runlog.write({"round": rnd, "event": "evaluation-rejected", "rejected": rejected, **tags})
        head = "gated" if self.model.gated else "plain"  # in every line: readers need no strategy table
        summary = self.runlog.evaluation(rnd, self.cfg.strategy, per_site, head=head, **tags)
        self.runlog.write_csv()
        if self.tensorboard is not None and "phase" not in tags:
            rows = [r for r in self.runlog.records() if r.get("round") == rnd and "dice" in r and "phase" not in r]
            self.tensorboard.evaluation(rnd, summary, rows)
        return summary

    # -- the run --------------------------------------------------------------------------------
    def checkpoint(self, rnd: int, state=None, kind: str = "", **kw) -> Path:
        extra = {
            **({"kind": kind} if kind else {}),
            "strategy": self.cfg.strategy,
            "run-id": self.run_id,
            "update-norms": self.norm_history[-50:],
            "pending-evaluation": self.pending,
            "updated-rounds": self.updated_rounds,
            "records": self.runlog.count(),  # a resume drops what the interrupted attempt wrote after this
            "phase-state": self.phase.state_dict(),
            **plans_record(self.cfg),
            "inference": inference_settings(self.model.spec, self.cfg.spacing, self.cfg.patch_size),  # self-contained
            **({"privacy": self.ledger.state_dict()} if self.ledger is not None else {}),
        }
        folder = self.run_dir / ("checkpoints" if "name" not in kw else "")
        state = self.state if state is None else state
        return save_checkpoint(folder, rnd, self.model.spec, state, extra, signer=self.signer, **kw)

    def run(self) -> dict:
        cfg, rnd = self.cfg, self.start - 1
        say(
            f"strategy={cfg.strategy} ({self.spec.summary}) arch={cfg.arch} norm={cfg.model_norm} head={cfg.head} "
            f"rounds {self.start}..{cfg.num_server_rounds}; run folder {self.run_dir}"
        )
        for rnd in range(self.start, cfg.num_server_rounds + 1):
            t0 = time.time()
            grew = self.admit(rnd)
            if grew and rnd > 1:  # a trained model grew: check every site on it before anyone trains
                s = self.evaluate(rnd - 1, phase="after-extension", joined=grew)
                say(f"evaluation after extension for {', '.join(grew)}: {self.describe(s)}")
            info = self.train(rnd)
            evaluated = info.pop("evaluated", None)
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
            if evaluated is not None:
                line += f" | round {evaluated['round']}'s model: {self.describe(evaluated)}"
            if self.tensorboard is not None:
                self.tensorboard.train(rnd, loss, time.time() - t0)
            last = bool(self.stop_reason) or rnd == cfg.num_server_rounds
            if last or rnd % cfg.eval_every == 0:  # the phase's evaluation point (server/phase.py)
                fragment = self.phase.at_evaluation(self, rnd, last)
                line += f" | {fragment}" if fragment else ""
            self.checkpoint(rnd)
            say(f"{line} ({time.time() - t0:.1f} s)")
            if self.stop_reason:
                break
        if not self.updated_rounds:  # nothing trained: no final model, and the run fails (whoever started it sees it)
            why = no_training_reasons(self.runlog.records(self.run_id))
            reason = f"no round changed the model: {why} (details: {self.runlog.path})"
            stopped = {"stopped": self.stop_reason} if self.stop_reason else {}
            self.runlog.write({"event": "failed", "rounds": rnd, "reason": reason, **stopped})
            if self.tensorboard is not None:
                self.tensorboard.close()
            say(f"failed: {reason}")
            raise RuntimeError(reason)
        self.phase.finish(self, rnd)
        final = self.checkpoint(rnd, name="final_model.pt")
        png = self.runlog.plot()
        summary = self.summary
        means = {k: v for k, v in summary.items() if k in ("oracle", "gated")}
        done = {"event": "done", "rounds": rnd, "final-mean-dice": means}
        done.update({k: summary[k] for k in ("gate-accuracy", "type-accuracy") if k in summary})
        if self.ledger is not None:
            done["privacy"] = self.ledger.spent()
        if self.stop_reason:
            done["stopped"] = self.stop_reason
        self.runlog.write(done)
        if self.tensorboard is not None:
            self.tensorboard.close()
        say(f"done: {final}, metrics {self.runlog.path} (table: metrics.csv, cross_site.csv), plot {png}")
        return {"run_dir": str(self.run_dir), "summary": means}


def run_server(grid: Grid, run_config: dict, overrides: dict | None = None) -> dict:
    """Run the rounds of one run; returns ``{"run_dir", "summary"}``. Model entries travel packed
    (``PackingGrid``) whatever the transport, so the benchmark's runs send what a deployment sends."""
    return RoundEngine(PackingGrid(grid), RunConfig.from_flwr({**dict(run_config), **(overrides or {})})).run()

"""A run's phase as a plug-in of the round engine (``server/rounds.py``).

A phase decides what differs between kinds of runs: which sites train and which are evaluated, the round's
learning rate, what a reply may carry, the global state a run starts from, what happens at an evaluation
point, what happens once the rounds are over, and the state it keeps in checkpoints. ``Phase`` itself is
segmentation (the run config's ``phase = "segment"``, with UMS-Rep's phase F when a plan or an artifact is
set); ``server/pretraining.py`` is UMS-Rep's phase P. A new phase is a subclass in its own module with
``@register_phase``; the engine looks it up by the run config's ``phase`` (tests/server/test_phase.py adds one).
Its sites do segmentation's work (or phase P's, for ``pretrain``): a phase changes what the server asks of whom,
not the site's step. In a deployment the sites parse the same run config, so a new phase's name must also be
accepted there (``uharmony.federation.config.accept_phase`` in code the ClientApp imports); the in-process and
simulation transports share the server's process and need nothing more.

A phase sees the engine through ``Engine`` below, nothing else of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType

from server.privacy import PrivacyLedger
from uharmony import protocol as P
from uharmony.federation.config import RunConfig, accept_phase, forget_phase
from uharmony.records.checkpoint import CheckpointError, load_checkpoint
from uharmony.umsrep.plans import get_plan, sendable_keys
from uharmony.vocabulary import PLANS_VERSION

log = logging.getLogger("uharmony.server")


class Engine(Protocol):
    """What a phase may use of the round engine."""

    cfg: RunConfig
    grid: Any  # the run's Flower grid
    admission: Any  # the admitted sites' profiles (``members``: node -> profile)
    model: Any
    outer: Any  # the Flower strategy that configures messages
    runlog: Any
    ledger: Any  # differential privacy's PrivacyLedger (None without DP)
    run_dir: Path
    run_id: str
    stop_reason: str
    pending: int
    summary: dict

    @property
    def state(self) -> dict: ...

    def members(self) -> list[int]: ...
    def base_config(self) -> dict: ...
    def say(self, text: str) -> None: ...
    def evaluate(self, rnd: int, experts: bool = False, **tags) -> dict: ...
    def refresh_prototypes(self, rnd: int) -> None: ...
    def describe(self, summary: dict) -> str: ...
    def checkpoint(self, rnd: int, state=None, kind: str = "", **kw) -> Path: ...


PHASES: dict[str, type[Phase]] = {}


def register_phase(cls: type[Phase]) -> type[Phase]:
    """Make ``cls`` the phase of runs whose config names ``cls.name`` (the run config accepts the name)."""
    PHASES[cls.name] = cls
    accept_phase(cls.name)
    return cls


def unregister_phase(name: str) -> None:
    """Undo ``register_phase`` (tests)."""
    PHASES.pop(name, None)
    forget_phase(name)


def make_phase(cfg: RunConfig) -> Phase:
    try:
        return PHASES[cfg.phase](cfg)
    except KeyError:
        raise ValueError(f"run config: phase {cfg.phase!r} has no server implementation ({sorted(PHASES)})") from None


def labelled(engine: Engine, nodes: list[int]) -> list[int]:
    return [n for n in nodes if engine.admission.members[n].get("labelled", True)]


def label_free(engine: Engine, nodes: list[int]) -> list[int]:
    return [n for n in nodes if not engine.admission.members[n].get("labelled", True)]


def ask_to_recalibrate(engine: Engine, rnd: int, nodes: list[int]) -> int:
    """Ask ``nodes`` to re-estimate their statistics under the current model; returns how many did."""
    if not nodes:
        return 0
    config = ConfigRecord({**engine.base_config(), P.SERVER_ROUND: rnd, P.SEED: engine.cfg.seed + rnd})
    messages = [
        Message(
            content=RecordDict({P.ARRAYS: ArrayRecord(engine.state), P.CONFIG: config}),
            message_type=f"{MessageType.QUERY}.{P.CALIBRATE_ACTION}",
            dst_node_id=n,
        )
        for n in nodes
    ]
    replies = engine.grid.send_and_receive(messages, timeout=engine.cfg.round_timeout)
    done = [m for m in replies if not m.has_error()]
    for m in replies:
        if m.has_error():
            log.warning("round %d: calibration at node %s failed: %s", rnd, m.metadata.src_node_id, m.error.reason)
    engine.runlog.write({"round": rnd, "event": "calibrated", "sites": len(done), "asked": len(nodes)})
    return len(done)


def plans_record(cfg: RunConfig) -> dict:
    """What a checkpoint records of the UMS-Rep plans its run trains under (nothing without a plan)."""
    return {"plans-version": PLANS_VERSION} if cfg.uses_plan else {}


def check_plans(cfg: RunConfig, extra: dict, where) -> None:
    """A resume under a UMS-Rep plan: the checkpoint's plans version (uharmony.vocabulary) must be this code's."""
    if cfg.uses_plan and extra.get("plans-version", 1) != PLANS_VERSION:
        raise CheckpointError(
            f"{where}: trained under UMS-Rep plans version {extra.get('plans-version', 1)}, this code has version "
            f"{PLANS_VERSION} (what 'independent' and 'alternating' train changed): start a new run"
        )


class Phase:
    """Segmentation: labelled sites train and are evaluated, at the run's scheduled rate, sending the
    strategy's entries (or, under a UMS-Rep plan, what the plan trains). Label-free sites recalibrate their
    statistics at each evaluation point. Subclasses override what differs."""

    name: ClassVar[str] = "segment"
    plan: ClassVar[str | None] = None  # the UMS-Rep plan replies follow (None: the run's ``finetune``)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    # -- who, how fast, what -----------------------------------------------------------------------
    def trainers(self, engine: Engine, members: list[int]) -> list[int]:
        """The members that train this round (a label-free site has nothing to segment)."""
        return labelled(engine, members)

    def would_train(self, profile: dict) -> bool:
        """Whether a site of this profile trains in this phase (``min-sites`` counts those before round 1)."""
        return bool(profile.get("labelled", True))

    def evaluated(self, engine: Engine, members: list[int]) -> list[int]:
        """The members whose Dice is asked for."""
        return labelled(engine, members)

    def learning_rate(self, engine: Engine, rnd: int, scheduled: float) -> float:
        """The round's rate, given the run's schedule's."""
        return scheduled

    def sent_keys(self, engine: Engine) -> set[str] | None:
        """What a reply may carry under the run's plan (None: the strategy's outgoing entries)."""
        if not self.cfg.uses_plan:
            return None
        plan = get_plan(self.plan or self.cfg.finetune)
        return set(sendable_keys(engine.model, plan, list(engine.state)))

    # -- start, evaluation points, end ---------------------------------------------------------------
    def initial_state(self, engine: Engine, model, state: dict) -> dict:
        """The global state a new run starts from: the model's own, or (phase F) its trunk from a phase-P
        artifact (``umsrep``); the heads that phase P did not have start from the run's seed."""
        if not self.cfg.umsrep:
            return state
        path = Path(self.cfg.umsrep)
        try:
            art = load_checkpoint(path.parent, path.name)
        except (CheckpointError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a usable UMS-Rep artifact ({exc})") from None
        if art["extra"].get("kind") != "umsrep":
            raise CheckpointError(f"{path}: not a UMS-Rep artifact (kind {art['extra'].get('kind')!r})")
        groups = get_plan("pretrain").trained_keys(model)  # the trunk (this model has no reconstruction head)
        loaded = {k: v for k, v in art["state"].items() if k in state and k in groups and v.shape == state[k].shape}
        missing = sorted(k for k in groups if k in state and k not in loaded)
        if missing:
            raise CheckpointError(f"{path}: its trunk does not fit this run's model (e.g. {missing[:3]})")
        run = art["extra"].get("run-id")
        if engine.ledger is not None:  # the trunk's privacy is phase P's: its releases count in this run's epsilon
            prior = art["extra"].get("privacy")
            if not prior:
                raise CheckpointError(
                    f"{path}: phase P ran without differential privacy, so a run under it cannot start from this "
                    "artifact (its trunk would not be private); run phase P with dp-noise-multiplier too"
                )
            engine.ledger = PrivacyLedger(
                self.cfg.dp_noise_multiplier, self.cfg.dp_delta, self.cfg.dp_max_epsilon, prior
            )
        engine.say(f"phase F starts from {path} (pretrained in run {run}, {len(loaded)} entries)")
        before = {"privacy-before": engine.ledger.spent()} if engine.ledger is not None else {}
        engine.runlog.write(
            {"event": "umsrep-start", "artifact": str(path), "entries": len(loaded), "round": 0, **before}
        )
        return {**state, **{k: v.to(state[k].dtype) for k, v in loaded.items()}}

    def at_evaluation(self, engine: Engine, rnd: int, last: bool) -> str:
        """At an evaluation point (every ``eval-every`` rounds and the last): returns a fragment of the round's
        log line. Label-free sites recalibrate, the gate's prototypes are refreshed, and the sites score the
        model: now at the last round (or for a pooled trainer), else at the start of the next train message."""
        ask_to_recalibrate(engine, rnd, label_free(engine, engine.members()))
        engine.refresh_prototypes(rnd)
        if last or engine.cfg.strategy_spec.pooled:  # (the pooled trainer's train message reaches one site only)
            engine.summary = engine.evaluate(rnd, experts=last)
            return engine.describe(engine.summary)
        engine.pending = rnd
        return ""

    def finish(self, engine: Engine, rnd: int) -> None:
        """After the last round, before the final model is written."""

    # -- its own checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def resume(self, extra: dict) -> None:
        """A resumed run: its state from the checkpoint's ``extra`` (``phase-state``)."""
        if "phase-state" in extra:
            self.load_state_dict(extra["phase-state"])


register_phase(Phase)

"""UMS-Rep steps of the round engine (``server/rounds.py``): who trains, what a reply may carry, phase P's
evaluation, learning-rate plateau and early stop, the end-of-phase recalibration and the ``umsrep.pt``
artifact, and phase F's start from that artifact.

- Phase P (``phase = "pretrain"``): every admitted site trains, labelled or label-free; each evaluation asks
  every site for its denoising scores on its validation scans; the rate is halved after ``plateau-patience``
  evaluations without a 1 % gain in the case-weighted validation loss and the phase stops after
  ``stop-patience``; at the end every site recalibrates its statistics on clean scans (they stay there) and
  the server writes ``umsrep.pt`` (shared entries, signed like every released model) and ``umsrep.json``.
- Phase F (``phase = "segment"``): label-free sites do not train or evaluate; at each evaluation they
  recalibrate their statistics under the current model (counts only leave them).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType

from uharmony import protocol as P
from uharmony.files import atomic_write
from uharmony.records.checkpoint import CheckpointError, load_checkpoint
from uharmony.umsrep.plans import get_plan, sendable_keys

from . import evaluation
from .grids import MembersGrid

log = logging.getLogger("uharmony.server")
ARTIFACT, MANIFEST = "umsrep.pt", "umsrep.json"
MIN_GAIN = 0.01  # a relative improvement of the validation loss that counts as progress


def pretraining(engine) -> bool:
    return engine.cfg.phase == "pretrain"


def labelled(engine, nodes: list[int]) -> list[int]:
    return [n for n in nodes if engine.admission.members[n].get("labelled", True)]


def label_free(engine, nodes: list[int]) -> list[int]:
    return [n for n in nodes if not engine.admission.members[n].get("labelled", True)]


def trainers(engine, members: list[int]) -> list[int]:
    """Phase P: every member; otherwise the labelled ones (a label-free site has nothing to segment)."""
    return list(members) if pretraining(engine) else labelled(engine, members)


def sent_keys(engine) -> set[str] | None:
    """What a reply may carry under the run's plan (None: the strategy's outgoing entries, as before)."""
    cfg = engine.cfg
    if not cfg.uses_plan:
        return None
    plan = get_plan("pretrain" if pretraining(engine) else cfg.finetune)
    return set(sendable_keys(engine.model, plan, list(engine.state)))


def phase_lr(engine, rnd: int, scheduled: float) -> float:
    """Phase P's rate is the server's plateau-managed one; phase F keeps the run's schedule."""
    return engine.umsrep_lr if pretraining(engine) else scheduled


def initial_state(engine, model, roles, state: dict) -> dict:
    """Phase F from an artifact: the global state with every trunk entry the artifact holds (same key and
    shape); the heads that phase P did not have start from the run's seed."""
    path = Path(engine.cfg.umsrep)
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
    engine.say(f"phase F starts from {path} (pretrained in run {art['extra'].get('run-id')}, {len(loaded)} entries)")
    engine.runlog.write({"event": "umsrep-start", "artifact": str(path), "entries": len(loaded), "round": 0})
    return {**state, **{k: v.to(state[k].dtype) for k, v in loaded.items()}}


def ask_to_recalibrate(engine, rnd: int, nodes: list[int]) -> int:
    """Ask ``nodes`` to re-estimate their statistics under the current model; returns how many did."""
    if not nodes:
        return 0
    config = ConfigRecord({**engine._base_config(), P.SERVER_ROUND: rnd, P.SEED: engine.cfg.seed + rnd})
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


def evaluate_denoising(engine, rnd: int, final: bool = False) -> dict:
    """Every member's denoising scores (every noise level and SSIM when ``final``; the middle level's PSNR and
    loss otherwise); files one record per site; returns the case-weighted means."""
    members = engine.members()
    config = ConfigRecord({**engine._base_config(), P.SEED: engine.cfg.seed, P.CROSS_EXPERTS: final})
    messages = engine.outer.configure_evaluate(
        rnd, ArrayRecord(engine.state), config, MembersGrid(engine.grid, members)
    )
    replies = engine.grid.send_and_receive(messages, timeout=engine.cfg.round_timeout)
    per_site, rejected = evaluation.collect(replies, engine.admission.members, engine.model.regions, server_round=rnd)
    for r in rejected:
        engine.runlog.write({"round": rnd, "event": "denoise-rejected", **r})
    totals: dict[str, float] = {}
    weight = 0.0
    for site, metrics in sorted(per_site.items()):
        n = float(metrics.get(P.NUM_EXAMPLES, 0))
        scores = {k: v for k, v in metrics.items() if k == P.VAL_LOSS or k.startswith(P.DENOISE_PREFIXES)}
        engine.runlog.write({"round": rnd, "event": "denoise", "site": site, "val_cases": n, **scores})
        if P.VAL_LOSS in scores and n > 0:
            weight += n
            for k, v in scores.items():
                totals[k] = totals.get(k, 0.0) + v * n
    return {k: v / weight for k, v in totals.items()} if weight else {}


def after_pretraining_round(engine, rnd: int, last: bool) -> str:
    """Phase P at an evaluation point: scores, plateau, early stop; a line for the log."""
    scores = evaluate_denoising(engine, rnd, final=last)
    loss = scores.get(P.VAL_LOSS)
    if loss is None:
        return "no denoising scores"
    if loss < engine.umsrep_best * (1 - MIN_GAIN):
        engine.umsrep_best, engine.umsrep_stale = loss, 0
    else:
        engine.umsrep_stale += 1
        if engine.umsrep_stale % engine.cfg.plateau_patience == 0:
            engine.umsrep_lr /= 2
            engine.runlog.write({"round": rnd, "event": "lr-plateau", "lr": engine.umsrep_lr})
        if engine.umsrep_stale >= engine.cfg.stop_patience and not last:
            engine.stop_reason = (
                f"phase P: validation loss has not improved by 1 % in {engine.umsrep_stale} evaluations"
            )
    middle = len(engine.cfg.noise_levels) // 2
    gain = scores.get(f"psnr-denoised-{middle}", math.nan) - scores.get(f"psnr-noisy-{middle}", math.nan)
    engine.runlog.write({"round": rnd, "event": "denoise-mean", "lr": engine.umsrep_lr, **scores})
    return f"denoising val loss {loss:.4f}, PSNR gain {gain:+.2f} dB at sigma {engine.cfg.noise_levels[middle]}"


def finish_pretraining(engine, rnd: int) -> Path:
    """End of phase P: every site recalibrates on clean scans; the artifact and its manifest are written."""
    if engine.stop_reason:  # stopped early: the last evaluation was the cheap one
        evaluate_denoising(engine, rnd, final=True)
    calibrated = ask_to_recalibrate(engine, rnd, engine.members())
    sent = sent_keys(engine) or set(engine.state)
    state = {k: v for k, v in engine.state.items() if k in sent}
    path = engine._checkpoint(rnd, name=ARTIFACT, state=state, kind="umsrep")
    sites = [engine.admission.members[n] for n in engine.members()]
    manifest = {
        "format": "uharmony-umsrep/1",
        "artifact": ARTIFACT,
        "run-id": engine.run_id,
        "rounds": rnd,
        "stopped": engine.stop_reason or None,
        "spec": engine.model.spec,
        "noise": engine.cfg.noise,
        "noise-levels": list(engine.cfg.noise_levels),
        "best-val-loss": None if engine.umsrep_best == math.inf else engine.umsrep_best,
        "sites": [{"site": p["site"], "labelled": p.get("labelled", True), "scans": p["train_cases"]} for p in sites],
        "calibrated-sites": calibrated,
        "entries": len(state),
        "use": f"flwr run . --run-config \"umsrep='{path}'\"  (phase F starts its trunk from it)",
    }
    atomic_write(Path(engine.run_dir) / MANIFEST, json.dumps(manifest, indent=1))
    engine.say(f"phase P done: {path} ({len(state)} entries; {calibrated} sites recalibrated on clean scans)")
    return path

"""UMS-Rep's phase P as a phase of the round engine (``server/phase.py``): every site trains, its own
evaluation, learning-rate plateau and early stop, the end-of-phase recalibration and the ``umsrep.pt``
artifact. (Phase F, the segmentation phase from that artifact, is ``server.phase.Phase``.)

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

from flwr.app import ArrayRecord, ConfigRecord

from server import evaluation
from server.grids import MembersGrid
from server.phase import Engine, Phase, ask_to_recalibrate, register_phase
from uharmony import protocol as P
from uharmony.files import atomic_write

log = logging.getLogger("uharmony.server")
ARTIFACT, MANIFEST = "umsrep.pt", "umsrep.json"
MIN_GAIN = 0.01  # a relative improvement of the validation loss that counts as progress


def evaluate_denoising(engine: Engine, rnd: int, final: bool = False) -> dict:
    """Every member's denoising scores (every noise level and SSIM when ``final``; the middle level's PSNR and
    loss otherwise); files one record per site; returns the case-weighted means."""
    members = engine.members()
    config = ConfigRecord({**engine.base_config(), P.SEED: engine.cfg.seed, P.CROSS_EXPERTS: final})
    messages = engine.outer.configure_evaluate(
        rnd, ArrayRecord(engine.state), config, MembersGrid(engine.grid, members)
    )
    replies = engine.grid.send_and_receive(messages, timeout=engine.cfg.round_timeout)
    per_site, rejected = evaluation.collect(replies, engine.admission.members, engine.model.regions, server_round=rnd)
    for r in rejected:
        engine.runlog.write({"round": rnd, "event": "denoise-rejected", **r})
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}  # per key: a score only some sites report (a reference's) is their mean
    for site, metrics in sorted(per_site.items()):
        n = float(metrics.get(P.NUM_EXAMPLES, 0))
        scores = {k: v for k, v in metrics.items() if k == P.VAL_LOSS or k.startswith(P.DENOISE_PREFIXES)}
        engine.runlog.write({"round": rnd, "event": "denoise", "site": site, "val_cases": n, **scores})
        if P.VAL_LOSS in scores and n > 0:
            for k, v in scores.items():
                totals[k], weights[k] = totals.get(k, 0.0) + v * n, weights.get(k, 0.0) + n
    return {k: v / weights[k] for k, v in totals.items()}


@register_phase
class Pretraining(Phase):
    """Phase P (``phase = "pretrain"``): label-free denoising on every admitted site, labelled or not."""

    name = "pretrain"
    plan = "pretrain"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.lr, self.best, self.stale = cfg.lr, math.inf, 0  # the plateau rule's state

    def trainers(self, engine: Engine, members: list[int]) -> list[int]:
        return list(members)

    def would_train(self, profile: dict) -> bool:
        return True  # every site denoises its own scans

    def learning_rate(self, engine: Engine, rnd: int, scheduled: float) -> float:
        return self.lr  # plateau-managed, not the run's schedule

    def at_evaluation(self, engine: Engine, rnd: int, last: bool) -> str:
        """Scores, plateau, early stop; a fragment for the log line."""
        scores = evaluate_denoising(engine, rnd, final=last)
        loss = scores.get(P.VAL_LOSS)
        if loss is None:
            return "no denoising scores"
        if loss < self.best * (1 - MIN_GAIN):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
            if self.stale % self.cfg.plateau_patience == 0:
                self.lr /= 2
                engine.runlog.write({"round": rnd, "event": "lr-plateau", "lr": self.lr})
            if self.stale >= self.cfg.stop_patience and not last:
                engine.stop_reason = f"phase P: validation loss has not improved by 1 % in {self.stale} evaluations"
        middle = len(self.cfg.noise_levels) // 2
        gain = scores.get(f"psnr-denoised-{middle}", math.nan) - scores.get(f"psnr-noisy-{middle}", math.nan)
        engine.runlog.write({"round": rnd, "event": "denoise-mean", "lr": self.lr, **scores})
        return f"denoising val loss {loss:.4f}, PSNR gain {gain:+.2f} dB at sigma {self.cfg.noise_levels[middle]}"

    def finish(self, engine: Engine, rnd: int) -> Path:
        """Every site recalibrates on clean scans; the artifact and its manifest are written."""
        if engine.stop_reason:  # stopped early: the last evaluation was the cheap one
            evaluate_denoising(engine, rnd, final=True)
        calibrated = ask_to_recalibrate(engine, rnd, engine.members())
        sent = self.sent_keys(engine) or set(engine.state)
        state = {k: v for k, v in engine.state.items() if k in sent}
        path = engine.checkpoint(rnd, name=ARTIFACT, state=state, kind="umsrep")
        sites = [engine.admission.members[n] for n in engine.members()]
        manifest = {
            "format": "uharmony-umsrep/1",
            "artifact": ARTIFACT,
            "run-id": engine.run_id,
            "rounds": rnd,
            "stopped": engine.stop_reason or None,
            "spec": engine.model.spec,
            "noise": self.cfg.noise,
            "pretext": self.cfg.pretext,
            "noise-levels": list(self.cfg.noise_levels),
            "best-val-loss": None if self.best == math.inf else self.best,
            "sites": [
                {"site": p["site"], "labelled": p.get("labelled", True), "scans": p["train_cases"]} for p in sites
            ],
            "calibrated-sites": calibrated,
            "entries": len(state),
            "privacy": engine.ledger.spent() if engine.ledger is not None else None,
            "use": f"flwr run . --run-config \"umsrep='{path}'\"  (phase F starts its trunk from it)",
        }
        atomic_write(Path(engine.run_dir) / MANIFEST, json.dumps(manifest, indent=1))
        engine.say(f"phase P done: {path} ({len(state)} entries; {calibrated} sites recalibrated on clean scans)")
        return path

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": min(self.best, 1e30), "stale": self.stale}

    def resume(self, extra: dict) -> None:
        if "phase-state" not in extra and "umsrep-plateau" in extra:  # a checkpoint from before phases
            lr, best, stale = extra["umsrep-plateau"]
            extra = {"phase-state": {"lr": lr, "best": best, "stale": stale}}
        super().resume(extra)

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.stale = float(state["lr"]), float(state["best"]), int(state["stale"])
        if self.best >= 1e30:
            self.best = math.inf

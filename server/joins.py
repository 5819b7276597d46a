"""Admitting the SuperNodes that joined before a round: a step of the round engine (``server/rounds.py``).

A site whose profile brings a new modality, label class or domain grows the model (when the run allows it);
a pending evaluation of the last round's model is done first, on the model as it was.
"""

from __future__ import annotations

import time

from server.admission import BadProfile, check_regions
from uharmony.federation.federated import extend_global_model, model_needs
from uharmony.model.adaptation import declare_expert_regions


def admit(engine, rnd: int) -> list[str]:
    """Admit the SuperNodes that joined since the last round; returns the sites that grew the model."""
    cfg, admission, runlog = engine.cfg, engine.admission, engine.runlog
    starting = not admission.members
    if starting:
        admission.wait_for_nodes(engine.grid, cfg.min_sites, cfg.round_timeout)
    ready, events = admission.candidates(engine.grid, rnd)
    if starting:
        ready, events = enough_trainers(engine, rnd, ready, events)
    for event in events:
        runlog.write({"round": rnd, **event})
    first = engine.model is None
    if first:
        if not ready:
            reasons = "; ".join(e.get("reason", e["event"]) for e in events) or "no SuperNode connected"
            raise RuntimeError(f"round {rnd}: no site could be admitted ({reasons})")
        # one expert per domain of the sites present now (joining sites add theirs)
        engine.use(cfg.build_model(cfg.num_domains or (1 + max(p["domain"] for _, p in ready))))
    grew = []
    for node, prof in ready:
        try:
            check_regions(prof, engine.model.regions)
        except BadProfile as exc:
            refuse(engine, rnd, node, prof, str(exc))
            continue
        domain = prof["domain"] if engine.model.gated else None
        needs = model_needs(engine.model, prof["modalities"], prof["regions"], domain)
        if any(needs.values()):
            why = (
                "extend-on-join is false"
                if not cfg.extend_on_join
                else f"strategy {cfg.strategy!r} has no global model to extend"
                if not engine.roles.global_keys() and not first  # before any training the spec can still grow
                else None
            )
            if why:
                refuse(engine, rnd, node, prof, f"site {prof['site']} needs {needs} but {why}", loud=True)
                continue
            engine.flush_pending_evaluation()  # the last round's model is scored as it was, before it grows
            model, _, state, needs = extend_global_model(
                engine.model.spec, engine.state, cfg.strategy, prof["modalities"], prof["regions"], domain, first
            )
            engine.use(model, state)
            grew.append(prof["site"])
        admission.admit(node, prof)
        runlog.write(
            {
                "round": rnd,
                "event": "join",
                "node": node,
                "added": needs,
                **{k: prof[k] for k in ("site", "domain", "modalities", "regions", "train_cases")},
                "model": {k: engine.model.spec[k] for k in ("modalities", "regions", "num_domains")},
            }
        )
        added = ", ".join(f"{k} {v}" for k, v in needs.items() if v)
        engine.say(
            f"round {rnd}: site {prof['site']} joined (domain {prof['domain']})"
            + (f"; model extended: {added}" if added else "")
        )
    if first and engine.model.gated:  # each starting expert knows what its domain's sites annotate
        declare_expert_regions(engine.model, [admission.members[n] for n in admission.members])
    return grew


def enough_trainers(engine, rnd: int, ready: list, events: list, poll: float = 1.0) -> tuple[list, list]:
    """Before round 1, when ``min-sites`` was reached with sites that do not train in this phase (a label-free
    site does not segment; every site denoises in phase P): ask newly connected nodes again until ``min-sites``
    of the ready ones train, or ``round-timeout`` has passed.
    Returns (ready profiles sorted by domain and site, each node's last event)."""
    cfg = engine.cfg
    deadline = time.time() + cfg.round_timeout

    def short(ready) -> bool:  # only when sites that do not train filled min-sites' count in wait_for_nodes
        trains = [engine.phase.would_train(p) for _, p in ready]
        return sum(trains) < cfg.min_sites and not all(trains)

    while short(ready) and time.time() < deadline:
        time.sleep(poll)
        more, later = engine.admission.candidates(engine.grid, rnd)
        ready = sorted(ready + more, key=lambda item: (item[1]["domain"], item[1]["site"]))
        events = list({e["node"]: e for e in events + later}.values())
    return ready, events


def refuse(engine, rnd: int, node: int, prof: dict, reason: str, loud: bool = False) -> None:
    reason = engine.admission.refuse(node, reason)
    engine.runlog.write({"round": rnd, "event": "join-refused", "node": node, "site": prof["site"], "reason": reason})
    if loud:
        engine.say(f"round {rnd}: refused site {prof['site']}: {reason}")

"""Flower ClientApp: converts messages to plain Python and runs :class:`uharmony.federation.site_round.SiteRound`.

Sends only what its strategy lets leave the site (``uharmony.federation.strategies``); site-local parameters and
the harmonization statistics stay in ``context.state`` and the site state folder (two versions, tagged
with their round: a round redone after a server crash starts from the state before it). Answers the
server's profile query (``query.profile``) with names and counts only (``client/site_profile.py``), and
the prototype query (``query.prototype``) with its domain's prototype under the aggregated model, and the
calibration query (``query.calibrate``, UMS-Rep) by re-estimating its statistics (counts only leave).
In phase P (``phase = "pretrain"``) a train message means denoising and an evaluate message the denoising
scores (``uharmony.federation.umsrep_round``).

The site's node config may raise the run's ``min-report-cases`` (its own privacy floor; ``SiteRound``).

A train message may ask the site to evaluate the model it carries before training (``evaluate-first``):
the reply then holds both, and the round needs no evaluate message. In a deployment Flower starts a new
process for every message, so torch and MONAI are imported inside the handlers that use them: the
profile query does not pay for them; and where ``uharmony-site start`` runs the site worker
(``client/worker.py``), each message is forwarded to that long-lived process, which runs these same handlers.
"""

from __future__ import annotations

import functools
import json
import math
import os

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from uharmony import protocol as P

from . import worker
from .packing import packed_arrays

LOCAL_STATE = "uharmony-local-state"  # the newest site-local state
LOCAL_PREVIOUS = "uharmony-local-state-previous"  # the one before it
LOCAL_ROUNDS = "uharmony-local-rounds"  # the rounds that wrote them


def _config(context: Context, overrides: dict | None):
    from uharmony.federation.config import RunConfig

    return RunConfig.from_flwr({**dict(context.run_config), **(overrides or {})})


def _kept_state(context: Context, before_round: int):
    """The site-local state this node keeps in memory that was written before ``before_round``."""
    from uharmony.federation.site_state import pick_version

    if LOCAL_ROUNDS not in context.state.config_records:
        return None
    rounds = context.state.config_records[LOCAL_ROUNDS]
    versions = [
        (float(rounds[name]), name)
        for name in (LOCAL_STATE, LOCAL_PREVIOUS)
        if name in rounds and name in context.state.array_records
    ]
    name = pick_version(versions, before_round)
    return None if name is None else dict(context.state.array_records[name].to_torch_state_dict())


def _keep_state(context: Context, local: dict, server_round: int) -> None:
    """Keep ``local`` as the newest version; the newest becomes the previous one unless this round wrote it."""
    rounds = dict(context.state.config_records[LOCAL_ROUNDS]) if LOCAL_ROUNDS in context.state.config_records else {}
    if LOCAL_STATE in context.state.array_records and rounds.get(LOCAL_STATE, -1) < server_round:
        context.state[LOCAL_PREVIOUS] = context.state.array_records[LOCAL_STATE]
        rounds[LOCAL_PREVIOUS] = rounds[LOCAL_STATE]
    context.state[LOCAL_STATE] = ArrayRecord(local)
    rounds[LOCAL_STATE] = server_round
    context.state[LOCAL_ROUNDS] = ConfigRecord(rounds)


def _site_round(msg: Message, context: Context, overrides: dict | None, before_round: int):
    from uharmony.federation.site_round import SiteRound

    server = msg.content[P.CONFIG]
    job = SiteRound(
        dict(context.node_config),
        _config(context, overrides),
        json.loads(str(server[P.MODEL_SPEC])),
        str(server[P.STRATEGY]),
        _kept_state(context, before_round),
        pooled=bool(server.get(P.POOLED, False)),
        run_id=str(server.get(P.RUN_ID, "")),
        before_round=before_round,
    )
    job.load(dict(msg.content[P.ARRAYS].to_torch_state_dict()))
    return job


def _round(msg: Message) -> int:
    return int(msg.content[P.CONFIG].get(P.SERVER_ROUND, 0))


def _identity(job) -> ConfigRecord:
    """Who is answering, and which cases it could not use: per case a reason category and a keyed hash of
    its id (``uharmony.data.redaction.skipped_report``), never a case id, file name or free text."""
    from uharmony.data.redaction import site_secret, skipped_report

    skipped = skipped_report(job.data.skipped, site_secret(job.state_dir)) if job.data.skipped else []
    return ConfigRecord({P.SITE_ID: job.site.name, P.DOMAIN_ID: job.site.domain, P.SKIPPED_LIST: skipped or [""]})


def _evaluation(job, server_round: int, experts: bool = False) -> MetricRecord:
    from uharmony.federation.site_work import site_work

    metrics = site_work(job.cfg).evaluate(job, server_round, experts)
    return MetricRecord({k: (-1.0 if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()})


def _site_handler(handler):
    """Every handler: the site worker answers when one runs for this SuperNode (``_forwarded``); else the
    handler runs here. An error leaves the site as a client error whose text names no folder of the site."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            if (reply := _forwarded(msg, context)) is not None:
                return reply
            return handler(msg, context)
        except Exception as exc:
            from uharmony.data.cases import redact_paths

            raise RuntimeError(redact_paths(f"{type(exc).__name__}: {exc}")[:1000]) from None

    return wrapper


def _forwarded(msg: Message, context: Context) -> Message | None:
    """The site worker's reply, when one runs for this SuperNode (else None: do the work here)."""
    path = os.environ.get(worker.SOCKET_ENV)
    content = worker.call(path, msg, context) if path else None
    return None if content is None else Message(content=content, reply_to=msg)


def make_app(overrides: dict | None = None) -> ClientApp:
    """``overrides``: run-config entries on top of ``context.run_config`` (``flwr.simulation.run_simulation``
    cannot pass a run config)."""
    app = ClientApp(mods=[packed_arrays])  # packed model entries in and out (uharmony.federation.wire)

    @app.train()
    @_site_handler
    def train(msg: Message, context: Context) -> Message:
        c, server_round = msg.content[P.CONFIG], _round(msg)
        job = _site_round(msg, context, overrides, server_round)
        content = RecordDict({})
        evaluated = int(c.get(P.EVALUATE_FIRST, 0))
        if evaluated:  # the received model is the one aggregated in round `evaluated`: evaluate it first
            content[P.EVALUATION] = _evaluation(job, evaluated)
        arrays, metrics, local = job.train(
            server_round, float(c[P.LR]), int(c[P.LOCAL_STEPS]), float(c.get(P.PROXIMAL_MU, 0.0)), int(c[P.SEED])
        )
        _keep_state(context, local, server_round)
        record = ArrayRecord(arrays)
        metrics = job.withhold(metrics)  # no train loss over fewer cases than the site's privacy floor
        metrics[P.UPDATE_BYTES] = record.count_bytes()
        content[P.ARRAYS], content[P.METRICS], content[P.SITE] = record, MetricRecord(metrics), _identity(job)
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    @_site_handler
    def evaluate(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides, _round(msg) + 1)
        experts = bool(msg.content[P.CONFIG].get(P.CROSS_EXPERTS, False))
        content = RecordDict({P.METRICS: _evaluation(job, _round(msg), experts), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.query(P.PROTOTYPE_ACTION)
    @_site_handler
    def prototype(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides, _round(msg) + 1)
        arrays, metrics = job.prototypes()
        content = RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.query(P.CALIBRATE_ACTION)
    @_site_handler
    def calibrate(msg: Message, context: Context) -> Message:
        from uharmony.federation.umsrep_round import recalibrate_site

        job = _site_round(msg, context, overrides, _round(msg) + 1)
        metrics, local = recalibrate_site(job, _round(msg), int(msg.content[P.CONFIG].get(P.SEED, 0)))
        _keep_state(context, local, _round(msg))
        return Message(content=RecordDict({P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)}), reply_to=msg)

    @app.query(P.PROFILE_ACTION)
    @_site_handler
    def profile(msg: Message, context: Context) -> Message:
        from .site_profile import site_profile

        prof = site_profile(dict(context.node_config), _config(context, overrides), _round(msg))
        return Message(content=RecordDict({P.PROFILE: ConfigRecord(prof)}), reply_to=msg)

    return app


app = make_app()

"""Flower ClientApp: converts messages to plain Python and runs :class:`uharmony.site_round.SiteRound`.

Sends only what its strategy lets leave the site (``uharmony.strategies``); site-local parameters and
the harmonization statistics stay in ``context.state`` and the site state folder. Answers the server's
profile query (``query.profile``) with names and counts only (``client/site_profile.py``), and the
prototype query (``query.prototype``) with its domain's prototype under the aggregated model.
"""

from __future__ import annotations

import json
import math

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from uharmony import protocol as P
from uharmony.config import RunConfig
from uharmony.data.cases import redact_paths
from uharmony.site_round import SiteRound

from .site_profile import site_profile

LOCAL_STATE = "uharmony-local-state"


def _config(context: Context, overrides: dict | None) -> RunConfig:
    return RunConfig.from_flwr({**dict(context.run_config), **(overrides or {})})


def _site_round(msg: Message, context: Context, overrides: dict | None) -> SiteRound:
    server = msg.content[P.CONFIG]
    saved = None
    if LOCAL_STATE in context.state.array_records:
        saved = dict(context.state.array_records[LOCAL_STATE].to_torch_state_dict())
    job = SiteRound(
        dict(context.node_config),
        _config(context, overrides),
        json.loads(str(server[P.MODEL_SPEC])),
        str(server[P.STRATEGY]),
        saved,
        pooled=bool(server.get(P.POOLED, False)),
        run_id=str(server.get(P.RUN_ID, "")),
    )
    job.load(dict(msg.content[P.ARRAYS].to_torch_state_dict()))
    return job


def _identity(job: SiteRound) -> ConfigRecord:
    """Who is answering, and which cases it could not use: case ids and reasons, never a file path."""
    skipped = [
        redact_paths(": ".join(str(s[k]) for k in ("case", "file", "reason") if s.get(k)))[:300]
        for s in job.data.skipped
    ]
    return ConfigRecord({P.SITE_ID: job.site.name, P.DOMAIN_ID: job.site.domain, P.SKIPPED_LIST: skipped or [""]})


def make_app(overrides: dict | None = None) -> ClientApp:
    """``overrides``: run-config entries on top of ``context.run_config`` (``flwr.simulation.run_simulation``
    cannot pass a run config)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides)
        c = msg.content[P.CONFIG]
        arrays, metrics, local = job.train(
            int(c[P.SERVER_ROUND]),
            float(c[P.LR]),
            int(c[P.LOCAL_STEPS]),
            float(c.get(P.PROXIMAL_MU, 0.0)),
            int(c[P.SEED]),
        )
        context.state[LOCAL_STATE] = ArrayRecord(local)
        record = ArrayRecord(arrays)
        metrics[P.UPDATE_BYTES] = record.count_bytes()
        content = RecordDict({P.ARRAYS: record, P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides)
        metrics = {
            k: (-1.0 if isinstance(v, float) and math.isnan(v) else v)
            for k, v in job.evaluate(int(msg.content[P.CONFIG].get(P.SERVER_ROUND, 0))).items()
        }
        content = RecordDict({P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.query(P.PROTOTYPE_ACTION)
    def prototype(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides)
        arrays, metrics = job.prototypes()
        content = RecordDict({P.ARRAYS: ArrayRecord(arrays), P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.query(P.PROFILE_ACTION)
    def profile(msg: Message, context: Context) -> Message:
        server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
        prof = site_profile(dict(context.node_config), _config(context, overrides), server_round)
        return Message(content=RecordDict({P.PROFILE: ConfigRecord(prof)}), reply_to=msg)

    return app


app = make_app()

"""Flower ClientApp: converts messages to plain Python and runs :class:`client.site_round.SiteRound`.

Sends only the shared entries and its own domain's head parts; site-local parameters and the
harmonization statistics stay in ``context.state`` and the site state folder. Answers the server's
profile query (``query.profile``) with names and counts only (``client/site_profile.py``).
"""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from uharmony import protocol as P
from uharmony.config import RunConfig

from .records import from_record, nbytes, to_record
from .site_profile import site_profile
from .site_round import SiteRound

LOCAL_STATE = "uharmony-local-state"


def _site_round(msg: Message, context: Context, overrides: dict | None) -> SiteRound:
    cfg = RunConfig.from_flwr({**dict(context.run_config), **(overrides or {})})
    server_cfg = msg.content[P.CONFIG]
    saved = None
    if LOCAL_STATE in context.state.array_records:
        saved = context.state.array_records[LOCAL_STATE].to_torch_state_dict()
    job = SiteRound(dict(context.node_config), cfg, str(server_cfg[P.MODEL_SPEC]), str(server_cfg[P.STRATEGY]), saved)
    job.load(from_record(msg.content[P.ARRAYS]))
    return job


def _identity(job: SiteRound) -> ConfigRecord:
    return ConfigRecord({P.SITE_ID: job.site.name, P.DOMAIN_ID: job.site.domain,
                         P.SKIPPED: [f"{s.get('case')}: {s['reason']}" for s in job.data.skipped] or [""]})


def make_app(overrides: dict | None = None) -> ClientApp:
    """``overrides``: run-config entries on top of ``context.run_config`` (used by run_simulation)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides)
        c = msg.content[P.CONFIG]
        arrays, metrics, local = job.train(int(c[P.SERVER_ROUND]), float(c[P.LR]), int(c[P.LOCAL_STEPS]),
                                           float(c.get(P.PROXIMAL_MU, 0.0)))
        context.state[LOCAL_STATE] = ArrayRecord(local)
        metrics[P.UPDATE_BYTES] = nbytes(arrays)
        content = RecordDict({P.ARRAYS: to_record(arrays), P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        job = _site_round(msg, context, overrides)
        metrics = {k: (v if not (isinstance(v, float) and math.isnan(v)) else -1.0) for k, v in job.evaluate().items()}
        content = RecordDict({P.METRICS: MetricRecord(metrics), P.SITE: _identity(job)})
        return Message(content=content, reply_to=msg)

    @app.query(P.PROFILE_ACTION)
    def profile(msg: Message, context: Context) -> Message:
        cfg = RunConfig.from_flwr({**dict(context.run_config), **(overrides or {})})
        server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
        content = RecordDict({P.PROFILE: ConfigRecord(site_profile(dict(context.node_config), cfg, server_round))})
        return Message(content=content, reply_to=msg)

    return app


app = make_app()

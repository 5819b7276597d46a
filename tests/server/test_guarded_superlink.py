"""The SuperLink's own policy (``server/operator/guarded_superlink.py``): what the service account may ask of it
(red-team review 2026-12-06, F1: the ServerApp runs only apps the coordinator signed)."""

import asyncio

from flwr.proto.control_pb2 import StartRunRequest
from flwr.proto.fab_pb2 import Fab

from server.operator.guarded_superlink import CONTROL_ROUTES, ControlAllowList, only_published_apps


def test_a_run_must_name_a_published_app():
    route = "/v1/control/start-run"
    uploaded = StartRunRequest(fab=Fab(hash_str="ab" * 32, content=b"PK\x03\x04 a bundle from a folder"))
    assert "only apps the coordinator published" in only_published_apps(
        "/v1/control/start-run", uploaded.SerializeToString()
    )
    published = StartRunRequest(app_spec="@uharmony/uharmony-fl==0.1.0")
    assert only_published_apps(route, published.SerializeToString()) is None
    assert only_published_apps(route, b"\xff\xff not protobuf") is not None
    assert only_published_apps(route, StartRunRequest().SerializeToString()) == "start-run: no app named"


def test_control_routes_the_coordinator_does_not_use_are_refused():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    async def call(path):
        sent = []

        async def send(message):
            sent.append(message)

        await ControlAllowList(app)({"type": "http", "path": path}, None, send)
        return sent[0]["status"] if sent else None

    assert asyncio.run(call("/v1/control/add-app")) == 403  # could store an app that was never signed
    assert asyncio.run(call("/v1/control/start-automation")) == 403
    assert asyncio.run(call("/v1/control/start-run")) is None and asyncio.run(call("/v1/fleet/pull-messages")) is None
    assert seen == ["/v1/control/start-run", "/v1/fleet/pull-messages"]
    assert "/v1/control/add-app" not in CONTROL_ROUTES

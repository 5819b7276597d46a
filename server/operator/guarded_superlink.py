"""The SuperLink as ``uharmony-coordinator start`` runs it: Flower's own SuperLink behind a local-account guard.

    python -m server.operator.guarded_superlink --account UID [--account UID] [--gateway-account UID] \
        -- <flower-superlink args>

Flower 1.41 serves the Fleet, Control and Runtime APIs on one HTTPS port; the Control API (registering
nodes, submitting runs) has no authentication without Flower's account login, and the Runtime API hands
out the ServerApp's task. On 127.0.0.1 that port is reachable by every account of the coordinator's
machine. This launcher parses the same arguments as ``flower-superlink``, builds Flower's application with
Flower's own functions and serves it with the same uvicorn settings, wrapped in
``uharmony.loopback_peers.LoopbackAccountGuard``:

- only the service account (the one running ``uharmony-coordinator start``) and root reach any route;
- the gateway's worker account (nginx) reaches the Fleet API routes only;
- of the Control API, only the routes the coordinator's commands use are served, and ``start-run`` only
  for a published app (``@publisher/name==version``, fetched from the coordinator's app registry, which
  serves only apps signed with the app-signing key): a run of an app uploaded from a folder is refused, so
  the ServerApp runs only apps the coordinator signed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from uharmony.loopback_peers import LoopbackAccountGuard, refuse

# the Control API routes that uharmony-coordinator (register, unregister, run) and `flwr ls` / `flwr log` use
CONTROL_ROUTES = frozenset(
    f"/v1/control/{name}"
    for name in (
        "start-run",
        "list-runs",
        "stop-run",
        "stream-logs",
        "register-node",
        "unregister-node",
        "list-nodes",
    )
)


def only_published_apps(_path: str, body: bytes) -> str | None:
    """``start-run`` policy: a run names a published app; one that carries a FAB (``flwr run <folder>``) is
    refused."""
    from flwr.proto.control_pb2 import StartRunRequest

    request = StartRunRequest()
    try:
        request.ParseFromString(body)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
        return "start-run: not a StartRunRequest"
    if request.fab.content or request.fab.hash_str:
        return (
            "this SuperLink runs only apps the coordinator published and signed "
            "(uharmony-coordinator publish, then uharmony-coordinator run); an app submitted from a folder is refused"
        )
    if not request.app_spec:
        return "start-run: no app named"
    return None


class ControlAllowList:
    """ASGI layer (inside the account guard): unknown ``/v1/control/`` routes are refused before Flower
    reads their body."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/v1/control/") and path not in CONTROL_ROUTES:
            return await refuse(send, 403, f"{path}: not used by this consortium's coordinator")
        return await self.app(scope, receive, send)


def guarded_app(app, accounts, gateway_accounts=()):
    return LoopbackAccountGuard(
        ControlAllowList(app),
        accounts,
        gateway_accounts,
        what="the SuperLink",
        inspect={"/v1/control/start-run": only_published_apps},
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m server.operator.guarded_superlink", description=__doc__.splitlines()[0])
    p.add_argument("--account", type=int, action="append", required=True, help="a uid that may use every API")
    p.add_argument("--gateway-account", type=int, action="append", default=[], help="a uid for the Fleet API only")
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-superlink's arguments")
    a = p.parse_args(argv)
    flower_args = a.flower_args[1:] if a.flower_args[:1] == ["--"] else a.flower_args

    import uvicorn
    from flwr.supercore import log
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    for legacy in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        os.environ.pop(legacy, None)  # Flower's unguarded gRPC servers for these APIs stay off
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not its function
    sys.argv = ["flower-superlink", *flower_args]  # Flower's own parser, checks and defaults
    config = cli._parse_superlink_lifespan_config()
    app = create_app(config, cli.SuperLinkLifespan)
    log(logging.INFO, "Starting the SuperLink HTTP API on %s:%s (local-account guard)", config.host, config.port)
    uvicorn.run(  # the settings of Flower's _run_superlink_http_api
        app=guarded_app(app, a.account, a.gateway_account),
        host=config.host,
        port=config.port,
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,
    )


if __name__ == "__main__":
    main()

"""The SuperNode as ``uharmony-site start`` runs it: Flower's own SuperNode, its Runtime API behind a
local-account guard, and an exit when its connection to the SuperLink has ended.

    python -m client.guarded_supernode --account UID [--account UID] -- <flower-supernode args>

1. The SuperNode's Runtime API (127.0.0.1:``port``, plain HTTP) hands the site's tasks to whoever asks: the
   message, the run's app, the node config and the site's local state (its harmonization statistics), and
   takes the reply as the hospital's. Every account of the hospital's machine reaches that port. Flower's
   SuperExec secret (``--superexec-auth-secret-file``, process isolation) guards only the first call; the
   task token that the others carry is on the command line of every ``flwr-clientapp`` process, which any
   local account can read in ``/proc``. Here the Runtime API is wrapped in
   ``uharmony.loopback_peers.LoopbackAccountGuard``: only the site's account (and root) reach it at all.
2. When Flower's SuperNode gives up on the SuperLink (it does so on the first TLS error, e.g. a gateway
   that ran out of connections), its connection loop ends but the process stays up with its Runtime API
   serving, offline for good. Here the process then exits with ``CONNECTION_LOST`` so that
   ``uharmony-site`` starts it again.
3. Flower's SuperNode sleeps 3 s after every pull that found no message (hard-coded in its connection loop,
   ``flwr.supernode.start_client_internal``), so each wave of a round's messages reaches a site up to 3 s
   late, and a run of tiny rounds spends most of its time waiting. ``--idle-poll`` shortens that module's
   waits to at most the given seconds (its other wait, 0.5 s for the ClientApp's reply, too). If a Flower
   upgrade moved the loop, the SuperNode runs with Flower's own waits and says so: slower, never wrong.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import time
import traceback

from uharmony.loopback_peers import LoopbackAccountGuard

CONNECTION_LOST = 75  # EX_TEMPFAIL: the SuperNode was connected and its connection loop ended
IDLE_POLL_SECONDS = 0.5  # site.toml ``idle-poll``: at most this long between pulls that find nothing
FLOWER_IDLE_SLEEP = "time.sleep(3)"  # what Flower's connection loop does after an empty pull (1.41, 1.42)


class PollClock:
    """``time`` as Flower's SuperNode connection loop sees it: every ``sleep`` at most ``idle`` seconds."""

    def __init__(self, idle: float):
        self.idle = float(idle)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(float(seconds), self.idle))

    def __getattr__(self, name):
        return getattr(time, name)


def shorten_idle_poll(idle: float) -> bool:
    """Install ``PollClock(idle)`` in Flower's connection-loop module; False (and nothing changed) when the
    loop is not the one this was written for."""
    import inspect

    try:
        loop = importlib.import_module("flwr.supernode.start_client_internal")
        known = loop.time is time and FLOWER_IDLE_SLEEP in inspect.getsource(loop.start_client_internal)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    if known:
        loop.time = PollClock(idle)
    return known


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m client.guarded_supernode", description=__doc__.splitlines()[0])
    p.add_argument("--account", type=int, action="append", required=True, help="a uid that may use the Runtime API")
    p.add_argument(
        "--idle-poll",
        type=float,
        default=IDLE_POLL_SECONDS,
        help="seconds between pulls that find no message (Flower's own: 3)",
    )
    p.add_argument("flower_args", nargs=argparse.REMAINDER, help="-- then flower-supernode's arguments")
    a = p.parse_args(argv)
    flower_args = a.flower_args[1:] if a.flower_args[:1] == ["--"] else a.flower_args
    if not a.idle_poll > 0:
        p.error(f"--idle-poll must be above 0 seconds, not {a.idle_poll}")

    import uvicorn
    from flwr.supercore import log
    from flwr.supercore.logger import console_handler

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")  # the module, not its function
    if not hasattr(cli, "_start_supernode_http_api"):  # fail closed if Flower's internals moved
        raise SystemExit("guarded_supernode: this Flower version starts its Runtime API elsewhere; not starting")

    def start_guarded_http_api(config, state_factory):
        """Flower's ``_start_supernode_http_api`` with the guard in front of the app."""
        from flwr.supernode.main import create_app

        app = create_app(state_factory=state_factory, superexec_auth_secret=config.superexec_auth_secret)
        server = uvicorn.Server(
            uvicorn.Config(
                app=LoopbackAccountGuard(app, a.account, what="the SuperNode's Runtime API"),
                host=config.host,
                port=config.port,
                reload=False,
                access_log=console_handler.level <= logging.DEBUG,
                ssl_certfile=config.runtime_ssl_certfile,
                ssl_keyfile=config.runtime_ssl_keyfile,
                workers=1,
            )
        )
        thread = threading.Thread(target=server.run, name="supernode-runtime-http-api")
        thread.start()
        while thread.is_alive() and not server.started:
            time.sleep(0.1)
        if not server.started:
            raise RuntimeError("SuperNode Runtime HTTP API failed to start.")
        return server, thread

    cli._start_supernode_http_api = start_guarded_http_api
    if a.idle_poll < 3 and not shorten_idle_poll(a.idle_poll):
        log(logging.WARNING, "this Flower version's connection loop moved: its own 3 s idle poll applies")
    sys.argv = ["flower-supernode", *flower_args]
    try:
        cli.flower_supernode()  # returns only when the connection loop has ended (Flower gave up on the SuperLink)
    except SystemExit:  # Flower's own exits stop the Runtime API first
        raise
    except BaseException:  # anything else would leave the process up with the Runtime API serving
        traceback.print_exc()
        _exit(1)
    log(logging.ERROR, "the SuperNode stopped talking to the SuperLink; exiting so that uharmony-site restarts it")
    _exit(CONNECTION_LOST)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the Runtime API's (non-daemon) thread would keep the process alive


if __name__ == "__main__":
    main()

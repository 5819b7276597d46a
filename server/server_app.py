"""Flower ServerApp: thin glue that runs the round engine (``server/rounds.py``) on Flower's grid."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .members import PollingGrid
from .rounds import run_server


def make_app(overrides: dict | None = None) -> ServerApp:
    """``overrides``: run-config entries on top of ``context.run_config`` (``flwr.simulation.run_simulation``
    cannot pass a run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(PollingGrid(grid), dict(context.run_config), overrides)  # replies pulled every 0.2 s, not 3 s

    return app


app = make_app()

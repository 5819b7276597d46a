"""Flower ServerApp: thin glue that runs the round engine (``server/rounds.py``) on Flower's grid."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.grids import PollingGrid
from server.rounds import run_server
from server.simulation_size import check_simulation_size
from uharmony.federation.config import RunConfig


def make_app(overrides: dict | None = None) -> ServerApp:
    """``overrides``: run-config entries on top of ``context.run_config`` (``flwr.simulation.run_simulation``
    cannot pass a run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = dict(context.run_config)
        # a simulation needs one SuperNode per site: a plain `flwr run .` (Flower's 2) is refused, naming main.sh
        check_simulation_size(grid, RunConfig.from_flwr({**run_config, **(overrides or {})}))
        run_server(PollingGrid(grid), run_config, overrides)  # replies pulled every 0.2 s, not 3 s

    return app


app = make_app()

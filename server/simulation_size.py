"""A run on Flower's simulation engine needs one SuperNode per site of its federation.

A plain ``flwr run .`` starts Flower's default local simulation, 2 SuperNodes in Flower 1.41 whatever the
federation holds, and would train the first two sites while reporting success. The ServerApp checks the size
before its first round and refuses a mismatch, naming the one command that runs the main job
(``bash scripts/main.sh``: one SuperNode per site, the app in the checkout's ``.venv``, the result checked).
A deployment's grid (hospitals' SuperNodes coming and going) is not checked.
"""

from __future__ import annotations

import time

from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from uharmony.data import load_federation
from uharmony.data.manifest import federation_root
from uharmony.federation.config import RunConfig

MAIN_JOB = "bash scripts/main.sh"


def simulated(grid: Grid) -> bool:
    """``grid`` is Flower's simulation engine's (``flwr run`` on a local simulation, ``run_simulation``)."""
    return isinstance(grid, InMemoryGrid)


def registered_nodes(grid: Grid, wait: float = 60.0, settle: float = 2.0) -> int:
    """The simulated SuperNodes (Flower registers them just after the ServerApp starts): their number once it
    has not changed for ``settle`` seconds, waiting at most ``wait`` for the first."""
    deadline, count, since = time.monotonic() + wait, -1, time.monotonic()
    while True:
        now = len(list(grid.get_node_ids()))
        if now != count:
            count, since = now, time.monotonic()
        if (count > 0 and time.monotonic() - since >= settle) or time.monotonic() >= deadline:
            return count
        time.sleep(0.1)


def check_simulation_size(grid: Grid, cfg: RunConfig, wait: float = 60.0) -> None:
    """RuntimeError (naming the main job's command) unless a simulated run has one SuperNode per site."""
    if not simulated(grid):
        return
    try:
        sites = len(load_federation(federation_root(cfg), seed=cfg.federation_seed).sites)
    except ValueError as exc:
        raise RuntimeError(f"{exc}\nTo run the main job (it prepares the federation first): {MAIN_JOB}") from None
    nodes = registered_nodes(grid, wait)
    if nodes != sites:
        raise RuntimeError(
            f"this run's federation has {sites} sites but Flower's simulation started {nodes} SuperNodes "
            f"(one per site is needed; a plain `flwr run .` gets Flower's default). Run the main job with:\n"
            f"    {MAIN_JOB}\n"
            f"(it starts one SuperNode per site and runs the app in this checkout's .venv). To size Flower's "
            f'simulation yourself: flwr run . --federation-config "num-supernodes={sites}"'
        )

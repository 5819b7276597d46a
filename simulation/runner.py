"""Run a whole simulated federation in this process: the product's round engine and ClientApp.

    uharmony-sim --strategy fedavg --rounds 2 --run-dir runs/fedavg            # in-process transport
    uharmony-sim --transport flower --rounds 2                                  # Flower's simulation engine
    run({"strategy": "uharmony", "num-server-rounds": 2})                       # Python

Transports: ``inprocess`` (``simulation.inprocess.InProcessGrid``: the ClientApp called directly) and
``flower`` (``flwr.simulation.run_simulation``: Ray workers, Flower's messaging). Both run
``server.rounds`` and ``client.client_app`` unchanged, so they give the same Dice.
Overrides use run-config keys (kebab-case) or RunConfig field names (snake_case).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

from uharmony.checks import one_of
from uharmony.data import load_federation
from uharmony.federation.config import RunConfig, parse_assignments
from uharmony.records.runlog import RunLog

from .embedded import ensure_federation

TRANSPORTS = ("inprocess", "flower")


def kebab(overrides: dict) -> dict:
    return {k.replace("_", "-"): v for k, v in overrides.items()}


def run(
    overrides: dict | None = None,
    transport: str = "inprocess",
    node_configs: list[dict] | None = None,
    cpus_per_client: int = 2,
    verbose: bool = False,
) -> dict:
    """Run one federation; returns ``{"run_dir", "summary", "seconds", "transport"}``.

    ``node_configs``: the simulated SuperNodes (default: one ``{"partition-id": i}`` per site of the
    federation). A run counts as finished only by a completion record written by this call.
    """
    from client.client_app import make_app as make_client
    from server.rounds import run_server
    from server.server_app import make_app as make_server

    overrides = kebab(overrides or {})
    cfg = RunConfig.from_flwr(overrides)
    if not cfg.run_id:  # this call's records carry it: an earlier run's completion record cannot pass for its own
        overrides["run-id"] = _resumed_run_id(cfg) if cfg.resume else uuid.uuid4().hex
        cfg = RunConfig.from_flwr(overrides)
    one_of("transport", transport, TRANSPORTS)
    sites = load_federation(ensure_federation(cfg), seed=cfg.federation_seed).sites
    node_configs = node_configs if node_configs is not None else [{"partition-id": i} for i in range(len(sites))]
    os.environ.setdefault("FLWR_HOME", str(Path(cfg.run_dir).resolve().parent / ".flwr"))
    t0 = time.time()
    if transport == "inprocess":
        from .inprocess import InProcessGrid

        run_server(InProcessGrid(make_client(), node_configs, run_config=overrides), overrides)
    else:
        from flwr.simulation import run_simulation

        if any(set(nc) != {"partition-id"} or nc["partition-id"] != i for i, nc in enumerate(node_configs)):
            raise ValueError("the flower transport gives its SuperNodes partition ids 0..N-1 only")
        run_simulation(
            server_app=make_server(overrides),
            client_app=make_client(overrides),
            num_supernodes=len(node_configs),
            backend_config={
                "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose},
            },
            verbose_logging=verbose,
        )
    done = RunLog(cfg.run_dir).done(cfg.run_id)
    if done is None:
        raise RuntimeError(f"federation run did not finish; see the log above and {cfg.run_dir}/metrics.jsonl")
    return {
        "run_dir": cfg.run_dir,
        "summary": done["final-mean-dice"],
        "seconds": round(time.time() - t0, 1),
        "transport": transport,
    }


def _resumed_run_id(cfg: RunConfig) -> str:
    from uharmony.records.checkpoint import load_checkpoint

    return str(load_checkpoint(Path(cfg.run_dir) / "checkpoints")["extra"].get("run-id", ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-sim", description="Run a simulated federation in this process")
    p.add_argument("--strategy", default="uharmony")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--transport", choices=TRANSPORTS, default="inprocess")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other run-config entries")
    a = p.parse_args(argv)
    try:
        overrides = {"strategy": a.strategy, "run-dir": a.run_dir or f"runs/{a.strategy}", **parse_assignments(a.set)}
        if a.rounds:
            overrides["num-server-rounds"] = a.rounds
        print(json.dumps(run(overrides, transport=a.transport)))
    except (ValueError, RuntimeError) as exc:
        print(f"uharmony-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""In-process federation runs for tests and benchmarks (``flwr.simulation.run_simulation``).

    uharmony-sim --strategy fedavg --rounds 2 --run-dir runs/fedavg     # CLI
    run(dict(strategy="uharmony", num_server_rounds=2))                # Python

Overrides use RunConfig field names (snake_case) or run-config keys (kebab-case).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from uharmony.config import RunConfig


def _kebab(overrides: dict) -> dict:
    return {k.replace("_", "-"): v for k, v in overrides.items()}


def run(overrides: dict | None = None, num_supernodes: int | None = None, cpus_per_client: int = 2,
        verbose: bool = False) -> dict:
    """Run a whole federation in this process; returns ``{"run_dir", "summary", "seconds"}``."""
    from flwr.simulation import run_simulation

    from client.client_app import make_app as make_client
    from client.data import federation_root
    from server.server_app import make_app as make_server
    from simulation.datasets import load_federation

    overrides = _kebab(overrides or {})
    cfg = RunConfig.from_flwr(overrides)
    if num_supernodes is None:
        num_supernodes = len(load_federation(federation_root(cfg), cfg.data_kind, cfg.partition or None).sites)
    os.environ.setdefault("FLWR_HOME", str(Path(cfg.run_dir).resolve().parent / ".flwr"))
    t0 = time.time()
    result: dict = {}
    server = make_server(overrides)
    run_simulation(server_app=server, client_app=make_client(overrides), num_supernodes=num_supernodes,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                   "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose}},
                   verbose_logging=verbose)
    done = [r for r in _records(Path(cfg.run_dir)) if r.get("event") == "done"]
    if not done:
        raise RuntimeError(f"federation run did not finish; see the log above and {cfg.run_dir}/metrics.jsonl")
    result.update(run_dir=cfg.run_dir, summary=done[-1]["final-mean-dice"], seconds=round(time.time() - t0, 1))
    return result


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-sim", description="Run a federation simulation in-process")
    p.add_argument("--strategy", default="uharmony")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other run-config entries")
    a = p.parse_args(argv)
    overrides = {"strategy": a.strategy}
    if a.rounds:
        overrides["num-server-rounds"] = a.rounds
    overrides["run-dir"] = a.run_dir or f"runs/{a.strategy}"
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = value
    try:
        print(json.dumps(run(overrides)))
    except ValueError as exc:
        print(f"uharmony-sim: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

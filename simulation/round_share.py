"""Where a site's round goes: the share that is not the training step (issue 33, item 2).

    python -m simulation.round_share [--rounds 3] [--set KEY=VALUE ...] [--out runs/round_share]

One site of the main job's federation (the run config's defaults, site 0) does what a train message makes it do,
``--rounds`` times, on one compute thread as a site trains in the main job: build its ``SiteRound`` (the site's
data from its preprocessed cache, the model), load the global weights, and train ``local-steps`` steps
(``SiteRound.train``: batch preparation by the data pipeline, the steps, the optimizer moments and site state
saved). Then the same model and configuration train the same number of steps on ready-made batches of the same
shape (``simulation.step_benchmark.measure``): the step alone. Reported per round, in seconds: set-up, batch
preparation (time spent waiting for the pipeline's next batch), the rest of ``train`` (steps + saving), and
``not_step_share`` = 1 - steps x step / (set-up + train). Appends one JSON line per call to
``--out``/results.jsonl, with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _timed_batches(data, spent: list[float]):
    """Wrap ``data.batches`` so that the time spent in its ``next`` is added to ``spent[0]``."""
    original = data.batches

    def batches(*args, **kwargs):
        it = original(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                spent[0] += time.perf_counter() - t0
            yield batch

    data.batches = batches


def measure(overrides: dict, rounds: int = 3, repeats: int = 3) -> dict:
    import torch

    from simulation.embedded import ensure_federation
    from simulation.step_benchmark import measure as step_alone
    from uharmony.data import load_federation
    from uharmony.federation.config import RunConfig
    from uharmony.federation.federated import ModelRoles, global_state_of
    from uharmony.federation.site_round import SiteRound

    torch.set_num_threads(1)
    cfg = RunConfig.from_flwr(overrides)
    sites = len(load_federation(ensure_federation(cfg, progress=False)).sites)
    model = cfg.build_model(sites)
    state = global_state_of(model, ModelRoles(model, cfg.strategy))
    per_round = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        job = SiteRound({"partition-id": 0}, cfg, model.spec, cfg.strategy, run_id="round-share")
        job.load(state)
        setup = time.perf_counter() - t0
        spent = [0.0]
        _timed_batches(job.data, spent)
        t1 = time.perf_counter()
        job.train(rnd, cfg.lr, cfg.local_steps, 0.0, cfg.seed)
        train = time.perf_counter() - t1
        per_round.append({"setup_s": setup, "train_s": train, "batches_s": spent[0]})
    later = per_round[1:] or per_round  # the first round also fills the site's preprocessed cache
    alone = step_alone(cfg, cfg.precision, cfg.channels_last, "cpu", cfg.local_steps, repeats)
    steps_s = alone["step_s"] * cfg.local_steps

    def med(key):
        return round(statistics.median(r[key] for r in later), 3)

    whole = med("setup_s") + med("train_s")
    return {
        "rounds": rounds,
        "local_steps": cfg.local_steps,
        "patch": cfg.patch_size,
        "batch": cfg.batch_size,
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "strategy": cfg.strategy,
        "setup_s": med("setup_s"),
        "train_s": med("train_s"),
        "batches_s": med("batches_s"),
        "steps_alone_s": round(steps_s, 3),
        "step_alone_s": alone["step_s"],
        "not_step_share": round(1 - steps_s / whole, 3),
        "first_round": {k: round(v, 3) for k, v in per_round[0].items()},
    }


def main(argv=None) -> dict:
    from flwr.common.config import parse_config_args

    p = argparse.ArgumentParser(prog="python -m simulation.round_share", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="train messages to time (the first fills the cache)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run-config entries")
    p.add_argument("--out", type=Path, default=Path("runs/round_share"))
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    from simulation.kit.machine import commit, machine
    from uharmony.files import append_jsonl

    overrides = parse_config_args([" ".join(a.set)]) if a.set else {}
    given = dict(overrides)
    overrides.setdefault("run-dir", str(a.out / "run"))  # the site's state (moments, statistics) goes there
    rec = {**measure(overrides, a.rounds), "set": given, "machine": machine(), "commit": commit()}
    print(json.dumps(rec), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    append_jsonl(a.out / "results.jsonl", rec)
    return rec


if __name__ == "__main__":
    main()

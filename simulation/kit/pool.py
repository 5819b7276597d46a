"""One process pool for every study's jobs: training jobs side by side on ``size.workers`` processes (one compute
thread each, spawned: no fork after torch has started its threads), timing and memory jobs alone afterwards."""

from __future__ import annotations

import logging
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from uharmony.files import append_jsonl


def one_thread() -> None:
    """Worker start: one thread each, so ``workers`` jobs share the cores without oversubscription."""
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("uharmony.server").setLevel(logging.ERROR)


def timed(size, key, call: tuple, out: Path, job) -> dict:
    t0 = time.time()
    rec = {"job": key, **job(size, call, out)}
    rec["job_seconds"] = round(time.time() - t0, 1)
    return rec


ALONE = ("bytes", "flower_ratio", "memory", "scale")  # timing and memory jobs: run alone, in this process


def run_jobs(size, todo: list, out: Path, on_done, job, label: str = "bench") -> None:
    """Run ``todo``: training jobs with ``size.workers`` processes side by side (one thread each), then the
    cost jobs one at a time in this process, so that nothing runs beside what they time; ``on_done(i, rec)``.
    ``job(size, call, out)``: what runs a call (a module-level function, so that the worker processes can import
    it); ``todo``: (key, call) pairs, the key becoming the record's ``job``. Every study's jobs go through this
    one pool."""
    side = [(k, c) for k, c in todo if c[0] not in ALONE]
    alone = [(k, c) for k, c in todo if c[0] in ALONE]
    done = 0
    if size.workers > 1 and len(side) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
        with ProcessPoolExecutor(size.workers, mp_context=ctx, initializer=one_thread) as pool:
            futures = {pool.submit(timed, size, key, call, out, job): key for key, call in side}
            print(f"[{label}] {len(side)} jobs on {size.workers} workers (one thread each)", flush=True)
            for fut in as_completed(futures):
                done += 1
                on_done(done, fut.result())
    else:
        alone = side + alone
    for key, call in alone:
        done += 1
        print(f"[{label}] job {done}/{len(todo)}: {key}", flush=True)
        on_done(done, timed(size, key, call, out, job))


def recorder(jsonl: Path, total: int, label: str, records: list | None = None):
    """The ledger's ``on_done`` for ``run_jobs``: each record appended to ``jsonl`` (and to ``records``) as its job
    finishes, so that a killed study resumes where it was, and a progress line with the time left."""
    t0 = time.time()

    def on_done(i: int, rec: dict) -> None:
        append_jsonl(jsonl, rec)
        if records is not None:
            records.append(rec)
        spent = time.time() - t0
        print(
            f"[{label}] {i}/{total} {rec['job']} in {rec['job_seconds']:.0f} s; {spent / 60:.1f} min, "
            f"about {spent / i * (total - i) / 60:.1f} min left",
            flush=True,
        )

    return on_done

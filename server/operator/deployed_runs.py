"""``uharmony-coordinator run``: one deployed run, its results folder under the coordinator's state folder,
and its progress while Flower runs it.

Every run writes into ``<state>/runs/<run-id>/`` (metrics, checkpoints, the signed final model): the
coordinator gives each new run a fresh id (``run-id``) and that folder (``run-dir``), so no run shares a
folder with another run or with a simulation's ``runs/latest``. ``--resume RUN_ID`` continues run
``RUN_ID`` from the last checkpoint in its folder; Flower's run id of any of its attempts (what ``run`` and
``status`` print first) names it too (``flower-runs.json`` in the folder lists them). A ``run-dir`` given in
the run config is kept when it is absolute and is taken under ``<state>/runs/`` when relative (never under the
folder ``start`` ran in).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from server.operator.control_api import CONNECTION, flwr
from server.operator.progress import RoundLogFollower
from uharmony.files import atomic_write


def runs_dir(state: Path) -> Path:
    return state.resolve() / "runs"


def new_run_id() -> str:
    """Sortable and unique: the submission's UTC time and 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


FLOWER_RUNS = "flower-runs.json"


def record_flower_run(folder: Path, flwr_run_id: str) -> None:
    """Note Flower's id of an attempt of the run in ``folder`` (so that ``--resume`` takes either id)."""
    path = folder / FLOWER_RUNS
    ids = json.loads(path.read_text()) if path.is_file() else []
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps([*ids, str(flwr_run_id)]))


def run_of(state: Path, given: str) -> str:
    """The run id ``--resume`` means: ``given`` itself when its folder exists, else the run one of whose
    attempts Flower knows as ``given``."""
    if (runs_dir(state) / given).is_dir():
        return given
    for path in sorted(runs_dir(state).glob(f"*/{FLOWER_RUNS}")):
        try:
            if given in json.loads(path.read_text()):
                return path.parent.name
        except (json.JSONDecodeError, TypeError):
            continue
    return given


def run_overrides(state: Path, run_config: str = "", resume: str | None = None) -> tuple[str, Path, str | None]:
    """(the run config to submit, the run's folder, its run id) for ``-c run_config`` and ``--resume``.

    A new run gets a new ``run-id`` and ``run-dir = <state>/runs/<run-id>``. ``resume`` (a run id) continues
    that run in its folder. A run config that says ``resume=true`` itself keeps its checkpoint's id."""
    from flwr.common.config import parse_config_args

    from uharmony.federation.config import RunConfig

    cfg = parse_config_args([run_config]) if run_config.strip() else {}
    RunConfig.from_flwr(cfg)  # an unknown key or a bad value: an error naming it, before anything is submitted
    resume = run_of(state, resume) if resume else resume
    if resume:
        if cfg.get("run-id", resume) != resume:
            raise ValueError(f"--resume {resume} and run-id={cfg['run-id']!r} disagree")
        cfg.update({"resume": True, "run-id": resume})
        cfg.setdefault("run-dir", resume)
    elif not cfg.get("resume"):
        cfg.setdefault("run-id", new_run_id())
    folder = Path(str(cfg.get("run-dir") or cfg.get("run-id") or new_run_id())).expanduser()
    folder = folder if folder.is_absolute() else runs_dir(state) / folder
    if resume and not (folder / "checkpoints").is_dir():
        raise FileNotFoundError(f"--resume {resume}: {folder / 'checkpoints'} does not exist (no checkpoint to resume)")
    cfg["run-dir"] = str(folder)
    run_id = str(cfg["run-id"]) if "run-id" in cfg else None
    return " ".join(f"{k}={_toml(v)}" for k, v in cfg.items()), folder, run_id


def submit(state: Path, app: str, run_config: str) -> str:
    """``flwr run`` of a published app on the consortium's SuperLink; returns Flower's run id."""
    res = flwr(state, "run", app, CONNECTION, "--format", "json", "-c", run_config)
    try:
        return str(json.loads(res.stdout)["run-id"])
    except (json.JSONDecodeError, KeyError):
        raise RuntimeError(f"flwr run failed: {res.stdout}{res.stderr}") from None


def flower_status(state: Path, flwr_run_id: str) -> dict | None:
    """The run's row of ``flwr ls --run-id`` (None while the SuperLink does not answer)."""
    ls = flwr(state, "ls", CONNECTION, "--run-id", flwr_run_id, "--format", "json")
    try:
        runs = json.loads(ls.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None
    return runs[0] if runs else None


def wait(
    state: Path,
    flwr_run_id: str,
    folder: Path,
    run_id: str | None,
    timeout: float,
    poll: float = 2.0,
    say: Callable[[str], None] = lambda line: print(line, flush=True),
    silent: float = 60.0,
) -> dict:
    """Until the run has finished: its round log's new lines as they come (``server/operator/progress.py``); returns
    its ``flwr ls`` row. ``timeout`` <= 0: no limit. After ``timeout`` s raises TimeoutError; the run goes on. A
    SuperLink that has not answered for ``silent`` s raises RuntimeError (it stopped: the run cannot go on)."""
    follower = RoundLogFollower(folder / "metrics.jsonl", run_id)
    deadline = time.time() + timeout if timeout > 0 else float("inf")
    answered = time.time()
    while True:
        row = flower_status(state, flwr_run_id)
        if row is not None:
            answered = time.time()
        elif time.time() - answered >= silent:
            raise RuntimeError(
                f"the consortium's SuperLink has not answered for {silent:g} s while run {flwr_run_id} was running: "
                f"is it still up? (`uharmony-coordinator status --state {state}`; restart it with "
                f"`uharmony-coordinator start`, then `uharmony-coordinator run --resume <run-id>`); results so far are "
                f"in {folder}"
            )
        for line in follower.poll():
            say(line)
        if row and str(row["status"]).startswith("finished"):
            for line in follower.poll() + follower.flush():  # what the run wrote since the last look
                say(line)
            return row
        if time.time() >= deadline:
            raise TimeoutError(
                f"run {flwr_run_id} did not finish within {timeout:g} s; it goes on: watch it with "
                f"`uharmony-coordinator status --state {state}`, its results are in {folder}"
            )
        time.sleep(poll)

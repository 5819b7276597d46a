"""The two steps ``scripts/main.sh`` wraps around ``flwr run .``.

    python -m simulation.main_job prepare [-c "RUN CONFIG"]          # the run's federation, generated if needed
    python -m simulation.main_job sites [-c "RUN CONFIG"]            # its number of sites (one SuperNode each)
    python -m simulation.main_job check [-c "RUN CONFIG"] --run-id ID  # the run completed and wrote its results

``check`` exits non-zero unless ``flwr ls`` shows the newest run ``finished:completed`` and the run folder
holds a completion record of run ``ID`` (the ``run-id`` given to ``flwr run``; ``flwr run`` exits 0 even
when the run failed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from uharmony.config import RunConfig
from uharmony.data import load_federation
from uharmony.runlog import RunLog

from .embedded import ensure_federation


def run_config(text: str) -> RunConfig:
    """The run config ``flwr run -c TEXT`` gives (the pyproject defaults are RunConfig's; a test keeps them equal)."""
    from flwr.common.config import parse_config_args

    try:
        return RunConfig.from_flwr(parse_config_args([text]) if text.strip() else {})
    except ValueError:
        raise
    except Exception as exc:  # Flower reports a malformed -c string as a click exception
        raise ValueError(f"run config {text!r}: {getattr(exc, 'message', exc)}") from None


def check(cfg: RunConfig, run_id: str) -> str:
    """Raises RuntimeError unless the newest Flower run completed and wrote this run's results."""
    out = subprocess.run(["flwr", "ls", "--format", "json"], capture_output=True, text=True, check=True).stdout
    runs = json.loads(out)["runs"]
    if not runs:
        raise RuntimeError("flwr ls shows no run")
    latest = max(runs, key=lambda r: r["pending-at"])
    status = f"run {latest['run-id']}: status {latest['status']} after {latest['elapsed']:.0f} s"
    if latest["status"] != "finished:completed":
        raise RuntimeError(f"{status}: the run did not complete ({latest['status-details']})")
    log = RunLog(cfg.run_dir)
    done = log.done(run_id)
    if done is None:
        raise RuntimeError(f"{status}, but {cfg.run_dir}/metrics.jsonl has no completion record from this run")
    if cfg.phase == "pretrain":  # UMS-Rep phase P: the artifact and the sites' denoising
        artifact = Path(cfg.run_dir) / "umsrep.pt"
        if not artifact.is_file():
            raise RuntimeError(f"{status}, but phase P wrote no {artifact}")
        scores = [r for r in log.records(run_id) if r.get("event") == "denoise-mean"]
        last = {k: round(v, 3) for k, v in (scores[-1] if scores else {}).items() if k.startswith(("psnr", "val"))}
        manifest = artifact.with_suffix(".json")
        return f"{status}\nartifact: {artifact} (manifest {manifest})\ndenoising: {json.dumps(last)}"
    return (
        f"{status}\nresults: {cfg.run_dir}/metrics.jsonl, {cfg.run_dir}/dice_per_round.png, "
        f"{cfg.run_dir}/metrics.csv, {cfg.run_dir}/cross_site.csv, {cfg.run_dir}/final_model.pt\n"
        "final mean Dice over sites and annotated regions: "
        f"{json.dumps(done['final-mean-dice'])}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.main_job", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("prepare", "sites", "check"))
    p.add_argument("-c", "--run-config", default="")
    p.add_argument("--run-id", default="")
    a = p.parse_args(argv)
    try:
        cfg = run_config(a.run_config)
        if a.step == "check":
            print(check(cfg, a.run_id), flush=True)
        else:
            root = ensure_federation(cfg, progress=a.step == "prepare")
            print(root if a.step == "prepare" else len(load_federation(root, seed=cfg.seed).sites), flush=True)
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The steps ``scripts/main.sh`` wraps around ``flwr run .``.

    python -m simulation.main_job prepare [-c "RUN CONFIG"]          # the run's federation, generated if needed
    python -m simulation.main_job sites [-c "RUN CONFIG"]            # its number of sites (one SuperNode each)
    python -m simulation.main_job paths [-c "RUN CONFIG"]            # its folders as absolute run-config entries
    python -m simulation.main_job check [-c "RUN CONFIG"] --run-id ID  # the run completed and wrote its results

``-c`` may be given several times (later entries win, as for ``flwr run``). ``paths`` prints ``data-root`` and
``run-dir`` made absolute against the current folder, for a further ``flwr run -c``: the ServerApp and ClientApps
then read and write the folders the user meant, whatever their own working folder.

``check`` exits non-zero unless ``flwr ls`` shows the newest run ``finished:completed`` and the run folder
holds a completion record of run ``ID`` (the ``run-id`` given to ``flwr run``; ``flwr run`` exits 0 even
when the run failed) showing real results: at least one site trained, a final Dice, and this run's
``dice_per_round.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from uharmony.data import load_federation
from uharmony.data.manifest import absolute
from uharmony.federation.config import RunConfig
from uharmony.records.plots import has_gated_head
from uharmony.records.runlog import RunLog, no_training_reasons

from .embedded import ensure_federation


def run_config(text: str | list[str]) -> RunConfig:
    """The run config ``flwr run -c TEXT`` gives (the pyproject defaults are RunConfig's; a test keeps them equal).
    A list is several ``-c`` strings, the later ones winning."""
    from flwr.common.config import parse_config_args

    texts = [t for t in ([text] if isinstance(text, str) else list(text)) if t.strip()]
    try:
        return RunConfig.from_flwr(parse_config_args(texts) if texts else {})
    except ValueError:
        raise
    except Exception as exc:  # Flower reports a malformed -c string as a click exception
        raise ValueError(f"run config {' '.join(texts)!r}: {getattr(exc, 'message', exc)}") from None


def absolute_paths(cfg: RunConfig) -> str:
    """``data-root`` (when set) and ``run-dir`` made absolute against the current folder, as a ``-c`` string."""
    entries = {"data-root": cfg.data_root, "run-dir": cfg.run_dir}
    out = []
    for key, value in entries.items():
        if not value:
            continue
        path = str(absolute(value))
        if "'" in path and '"' in path:
            raise ValueError(f"run config: {key} {path!r} holds both kinds of quote; rename the folder")
        out.append(f"{key}={path!r}" if '"' in path else f"{key}='{path}'")
    return " ".join(out)


def flower_status() -> str:
    """The newest Flower run's status line from ``flwr ls``; RuntimeError unless it completed."""
    out = subprocess.run(["flwr", "ls", "--format", "json"], capture_output=True, text=True, check=True).stdout
    runs = json.loads(out)["runs"]
    if not runs:
        raise RuntimeError("flwr ls shows no run")
    latest = max(runs, key=lambda r: r["pending-at"])
    status = f"run {latest['run-id']}: status {latest['status']} after {latest['elapsed']:.0f} s"
    if latest["status"] != "finished:completed":
        raise RuntimeError(f"{status}: the run did not complete ({latest['status-details']})")
    return status


def check_results(cfg: RunConfig, run_id: str, status: str = "") -> str:
    """What the run folder shows of run ``run_id``; RuntimeError unless it holds a completion record, at least one
    trained site, a final Dice (phase P: its artifact) and this run's plot."""
    but = f"{status}, but " if status else ""
    log = RunLog(cfg.run_dir)
    done = log.done(run_id)
    records = log.records(run_id)
    if done is None:
        failed = [r for r in records if r.get("event") == "failed"]
        if failed:
            raise RuntimeError(f"{but}the run failed: {failed[-1]['reason']}: check data-root / the sites' data")
        raise RuntimeError(f"{but}{cfg.run_dir}/metrics.jsonl has no completion record from this run")
    if not any(r.get("sites") for r in records if r.get("event") == "train"):  # (runs from before failed ones)
        raise RuntimeError(f"{but}{no_training_reasons(records)}: check data-root / the sites' data")
    if cfg.phase == "pretrain":  # UMS-Rep phase P: the artifact and the sites' denoising
        artifact = Path(cfg.run_dir) / "umsrep.pt"
        if not artifact.is_file():
            raise RuntimeError(f"{but}phase P wrote no {artifact}")
        scores = [r for r in records if r.get("event") == "denoise-mean"]
        last = {k: round(v, 3) for k, v in (scores[-1] if scores else {}).items() if k.startswith(("psnr", "val"))}
        manifest = artifact.with_suffix(".json")
        return f"{status}\nartifact: {artifact} (manifest {manifest})\ndenoising: {json.dumps(last)}".lstrip()
    dice = done.get("final-mean-dice") or {}
    if not dice:
        raise RuntimeError(f"{but}the run has no final Dice: no site evaluated the final model")
    plot = Path(cfg.run_dir) / "dice_per_round.png"
    started = min((r["time"] for r in records if "time" in r), default=0.0)
    if not plot.is_file() or plot.stat().st_mtime < started - 1.0:
        raise RuntimeError(f"{but}this run wrote no {plot}")
    if has_gated_head([r for r in records if "dice" in r and "mode" in r]):
        means = f"dataset-free (gate) {dice.get('gated', float('nan')):.3f}, own expert {dice.get('oracle', 0):.3f}"
    else:  # one head: its two modes are one
        means = f"{dice.get('oracle', dice.get('gated', float('nan'))):.3f}"
    return (
        f"{status}\nresults: {cfg.run_dir}/metrics.jsonl, {plot}, "
        f"{cfg.run_dir}/metrics.csv, {cfg.run_dir}/cross_site.csv, {cfg.run_dir}/final_model.pt\n"
        f"final mean Dice over sites and annotated regions: {means}"
    ).lstrip()


def check(cfg: RunConfig, run_id: str) -> str:
    """Raises RuntimeError unless the newest Flower run completed and wrote this run's results; a run that failed
    says its own reason (from its round log) before Flower's."""
    try:
        status = flower_status()
    except RuntimeError as flower:
        try:
            check_results(cfg, run_id)
        except RuntimeError as own:
            raise RuntimeError(f"{flower}\n{own}") from None
        raise
    return check_results(cfg, run_id, status)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulation.main_job", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("prepare", "sites", "paths", "check"))
    p.add_argument("-c", "--run-config", action="append", default=[], help="run-config entries (may repeat)")
    p.add_argument("--run-id", default="")
    a = p.parse_args(argv)
    try:
        cfg = run_config(a.run_config)
        if a.step == "check":
            print(check(cfg, a.run_id), flush=True)
        elif a.step == "paths":
            print(absolute_paths(cfg), flush=True)
        else:
            root = ensure_federation(cfg, progress=a.step == "prepare")
            sites = None if a.step == "prepare" else len(load_federation(root, seed=cfg.federation_seed).sites)
            print(absolute(root) if sites is None else sites, flush=True)
    except (ValueError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

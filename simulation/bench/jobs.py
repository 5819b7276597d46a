"""The benchmark's jobs. Each returns one JSON-ready record for ``results.jsonl``.

Training goes through :func:`simulation.bare_loop.bare_run` (the library code of a Flower run, without
the runtime), so every method gets the same federation, seed, rounds and local steps; the Flower
runtime's own cost is measured separately (:func:`flower_ratio_job`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from client.records import nbytes
from client.site_round import SiteRound
from server.run_log import RunLog
from server.server_app import initial_model
from uharmony.config import RunConfig
from uharmony.federated import ModelRoles, to_numpy
from uharmony.inference import calibrate, regions_to_brats
from uharmony.training import evaluate_cases, predict

from ..bare_loop import bare_run
from .sizes import BenchSize

REGIONS = ("ET", "TC", "WT")


def _clean(v) -> float | None:
    return None if v is None or not isinstance(v, (int, float)) or math.isnan(v) or v < 0 else round(float(v), 4)


def site_dice(metrics: dict, mode: str) -> dict[str, float | None]:
    """{ET, TC, WT} Dice of one site's evaluation metrics; None where the site does not annotate the region."""
    return {r: _clean(metrics.get(f"dice-{r.lower()}-{mode}")) for r in REGIONS}


def _dice(evaluated: dict) -> dict[str, float | None]:
    return {r: _clean(evaluated.get(f"dice-{r.lower()}")) for r in REGIONS}


def _fresh(run_dir: Path) -> str:
    shutil.rmtree(run_dir, ignore_errors=True)
    return str(run_dir)


def method_job(size: BenchSize, strategy: str, seed: int, out: Path, overlay: bool = False) -> dict:
    run_dir = out / "runs" / f"{strategy}-seed{seed}"
    res = bare_run({**size.base_overrides(seed), "strategy": strategy, "run-dir": _fresh(run_dir)},
                   label=f"{strategy} seed {seed}")
    modes = ("oracle", "gated") if strategy == "uharmony" else ("gated",)
    curve = [{"round": r["round"], **{m: {s: site_dice(v, m) for s, v in r["per_site"].items()} for m in modes}}
             for r in res["rounds"] if r["per_site"]]
    rec = {"kind": "method", "method": strategy, "seed": seed, "modes": list(modes), "final": curve[-1],
           "curve": curve, "train_seconds_per_round": [round(r["train_seconds"], 2) for r in res["rounds"]],
           "run_dir": str(run_dir)}
    if overlay:
        rec["overlay"] = str(save_overlay(res, out / "overlays" / f"{strategy}-seed{seed}.npz"))
    return rec


def ablation_job(size: BenchSize, name: str, change: dict, seed: int, out: Path) -> dict:
    change = dict(change)
    if change.get("harmonize-layers") == "half":
        change["harmonize-layers"] = norm_layer_count(size) // 2
    slug = "".join(c if c.isalnum() else "-" for c in name)[:40]
    run_dir = out / "runs" / f"ablation-{slug}-seed{seed}"
    over = {**size.base_overrides(seed), "strategy": "uharmony", "eval-every": size.rounds, "run-dir": _fresh(run_dir), **change}
    res = bare_run(over, label=f"ablation {name} seed {seed}")
    final = res["rounds"][-1]["per_site"]
    return {"kind": "ablation", "variant": name, "change": change, "seed": seed,
            "final": {m: {s: site_dice(v, m) for s, v in final.items()} for m in ("oracle", "gated")},
            "train_seconds_per_round": [round(r["train_seconds"], 2) for r in res["rounds"]]}


def norm_layer_count(size: BenchSize) -> int:
    cfg = RunConfig.from_flwr({**size.base_overrides(0), "strategy": "fedavg", "num-domains": 1})
    model, _ = initial_model(cfg)
    return sum(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in model.modules())


def unseen_job(size: BenchSize, strategy: str, seed: int, out: Path) -> dict:
    """Leave site ``size.held_out`` out of training, then segment its validation scans dataset-free.

    U-Harmony first computes the held-out site's harmonization statistics from its unlabeled training
    scans (``uharmony.inference.calibrate``: no label, no gradient); FedAvg's global model is used as is.
    """
    run_dir = out / "runs" / f"unseen-{strategy}-seed{seed}"
    train = [p for p in range(size.sites) if p != size.held_out]
    over = {**size.base_overrides(seed), "strategy": strategy, "eval-every": size.rounds, "run-dir": _fresh(run_dir),
            "num-domains": size.sites}
    res = bare_run(over, train_sites=train, label=f"unseen {strategy} seed {seed}")
    cfg = res["config"]
    job = SiteRound({"partition-id": size.held_out}, cfg, res["spec"], strategy, None)
    job.load(res["global_state"])
    rec = {"kind": "unseen", "method": strategy, "seed": seed, "held_out": job.site.name,
           "val_cases": len(job.data.val), "calibration_scans": len(job.data.train)}
    if strategy == "uharmony":
        rec["uncalibrated"] = _dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size))
        t0 = time.time()
        calibrate(job.model, [(it["image"], it["present"]) for it in job.data.train], cfg.patch_size)
        rec["calibration_seconds"] = round(time.time() - t0, 2)
    rec["dice"] = _dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size))
    rec["training_sites_final"] = {s: site_dice(v, "gated") for s, v in res["rounds"][-1]["per_site"].items()}
    return rec


def save_overlay(res: dict, path: Path) -> Path:
    """Mid-lesion axial slice of each site's first validation case: FLAIR, ground truth, dataset-free prediction."""
    cfg = res["config"]
    arrays = {}
    for pid in res["train_sites"]:
        job = SiteRound({"partition-id": pid}, cfg, res["spec"], cfg.strategy, res["local"].get(pid))
        job.load(res["global_state"])
        if not job.data.val:
            continue
        item = job.data.val[0]
        prob = predict(job.model, item["image"], item["present"], None, cfg.patch_size)[0]
        pred = regions_to_brats(prob).numpy()
        truth = regions_to_brats(torch.as_tensor(item["label"]).float()).numpy()
        z = int(np.argmax((truth > 0).sum(axis=(0, 1)))) if truth.any() else truth.shape[2] // 2
        image = np.asarray(item["image"][-1])  # FLAIR (channels t1, t1ce, t2, flair)
        arrays[f"{job.site.name}__image"] = image[:, :, z]
        arrays[f"{job.site.name}__truth"] = truth[:, :, z]
        arrays[f"{job.site.name}__pred"] = pred[:, :, z]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def bytes_job(size: BenchSize) -> dict:
    """Bytes a site sends per round under each strategy (what RoleAwareFedAvg expects to receive)."""
    rows = {}
    for strategy in ("fedavg", "fedprox", "fedbn", "uharmony", "local"):
        cfg = RunConfig.from_flwr({**size.base_overrides(0), "strategy": strategy})
        model, _ = initial_model(cfg)
        roles = ModelRoles(model, strategy)
        full = nbytes(to_numpy(model.state_dict(), model.state_dict().keys()))
        sent = nbytes(to_numpy(model.state_dict(), roles.outgoing_keys(0 if model.gated else None)))
        rows[strategy] = {"sent_bytes": sent, "full_model_bytes": full}
    return {"kind": "bytes", "per_strategy": rows}


def flower_ratio_job(size: BenchSize, out: Path, strategy: str = "uharmony") -> dict:
    """Per-round training time of a real Flower simulation (run_simulation, Ray workers, messages) over
    the bare in-process loop doing the same local work (same seed, sites, steps)."""
    from simulation.runner import run as flower_run

    over = {**size.base_overrides(size.seeds[0]), "strategy": strategy, "num-server-rounds": size.flower_rounds,
            "eval-every": size.flower_rounds}
    bare = bare_run({**over, "run-dir": _fresh(out / "runs" / f"ratio-bare-{strategy}")}, label="ratio bare")
    flower_dir = out / "runs" / f"ratio-flower-{strategy}"
    t0 = time.time()
    flower = flower_run({**over, "run-dir": _fresh(flower_dir)})
    wall = time.time() - t0
    recs = RunLog(flower_dir).records()
    train = [r for r in recs if r.get("event") == "train"]
    f_s = [float(r["seconds"]) for r in train]
    b_s = [r["train_seconds"] for r in bare["rounds"]]
    sent = [v for r in train for v in (r.get("update-bytes") or {}).values() if v]
    return {"kind": "flower_ratio", "strategy": strategy, "rounds": size.flower_rounds,
            "flower_round_seconds": [round(x, 2) for x in f_s], "bare_round_seconds": [round(x, 2) for x in b_s],
            "ratio_median": round(float(np.median(f_s) / np.median(b_s)), 3),
            "ratio_after_first": round(float(np.median(f_s[1:]) / np.median(b_s[1:])), 3) if len(f_s) > 1 else None,
            "flower_wall_seconds": round(wall, 1), "update_bytes_per_site": int(np.median(sent)) if sent else None,
            "dice_flower": flower["summary"], "dice_bare": bare["summary"]}


def memory_job(size: BenchSize, strategy: str, out: Path) -> dict:
    """Peak resident memory of a fresh client process doing one site's round (``client_memory``)."""
    over = {**size.base_overrides(size.seeds[0]), "strategy": strategy, "run-dir": str(out / "runs" / f"memory-{strategy}")}
    cmd = [sys.executable, "-m", "simulation.bench.client_memory", json.dumps(over)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"client memory probe failed:\n{proc.stderr[-2000:]}")
    return {"kind": "memory", "strategy": strategy, **json.loads(proc.stdout.strip().splitlines()[-1])}


def scale_job(size: BenchSize, out: Path, strategy: str = "uharmony") -> dict:
    """One Flower round (train + evaluate) with the FeTS partitioning_1 site count on the generator."""
    from simulation.datasets.embedded import embedded_federation
    from simulation.runner import run as flower_run

    seed = size.seeds[0]
    t0 = time.time()
    embedded_federation(size.scale_sites, size.scale_cases, seed, size.scale_spacing)
    gen_s = time.time() - t0
    run_dir = out / "runs" / f"scale-{size.scale_sites}-sites"
    over = {"seed": seed, "synth-sites": size.scale_sites, "synth-cases-per-site": size.scale_cases,
            "synth-spacing": size.scale_spacing, "spacing": size.scale_spacing, "num-server-rounds": 1,
            "local-steps": size.scale_steps, "patch-size": size.patch_size, "filters": size.filters,
            "strategy": strategy, "run-dir": _fresh(run_dir)}
    t0 = time.time()
    res = flower_run(over, num_supernodes=size.scale_sites)
    wall = time.time() - t0
    recs = RunLog(run_dir).records()
    train = next(r for r in recs if r.get("event") == "train")
    evaluated = {r["site"] for r in recs if "dice" in r}
    sent = [v for v in (train.get("update-bytes") or {}).values() if v]
    return {"kind": "scale", "strategy": strategy, "sites": size.scale_sites, "cases_per_site": size.scale_cases,
            "local_steps": size.scale_steps, "generation_seconds": round(gen_s, 1), "round_wall_seconds": round(wall, 1),
            "train_round_seconds": train["seconds"], "accepted": len(train["sites"]), "rejected": len(train["rejected"]),
            "evaluated_sites": len(evaluated), "bytes_received_by_server": int(sum(sent)), "dice": res["summary"]}

"""The benchmark's jobs. Each returns one JSON-ready record for ``results.jsonl``.

Training goes through :func:`simulation.runner.run` with the in-process transport: the product's round
engine and ClientApp, without the Flower runtime, so every method gets the same federation, seed, rounds
and local steps, and a bench number is a product number. What the runtime adds is measured separately
(:func:`flower_ratio_job`). Every figure is read back from the run folder the product writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from simulation.kit.runs import (
    fresh_dir,
    mean_local_state,
    per_case_records,
    region_dice,
    run_curve,
    run_gate_accuracy,
    site_view,
)
from uharmony.data import federation_root, load_federation
from uharmony.federation.config import RunConfig
from uharmony.federation.federated import ModelRoles, subset
from uharmony.federation.strategies import STRATEGIES
from uharmony.model.gating import scan_descriptors, uses_scan_gate
from uharmony.model.inference import estimate_site_statistics, regions_to_brats
from uharmony.model.norm import UHarmonyNorm
from uharmony.model.training import evaluate_cases, predict
from uharmony.records.runlog import RunLog

from ..embedded import ensure_federation
from ..runner import run
from .sizes import SCENARIO_SITES, BenchSize


def method_job(
    size: BenchSize,
    scenario: str,
    strategy: str,
    seed: int,
    out: Path,
    overlay: bool = False,
    rounds: int | None = None,
    kappa: float | None = None,
    kind: str = "method",
) -> dict:
    """One method on one scenario and seed. ``rounds``: other than the size's (the plateau check);
    ``kappa``: another S2 strength (the kappa curve)."""
    tag = f"{kind}-{scenario}" + (f"-k{kappa:g}" if kappa is not None else "") + f"-{strategy}-seed{seed}"
    run_dir = out / "runs" / tag
    over = {**size.base_overrides(seed, scenario, kappa), "strategy": strategy, "run-dir": fresh_dir(run_dir)}
    if rounds is not None:
        over.update({"num-server-rounds": rounds, "eval-every": size.eval_every * rounds // size.rounds})
    run(over)
    modes = ("oracle", "gated") if STRATEGIES[strategy].head == "gated" else ("gated",)
    curve, seconds = run_curve(run_dir, modes)
    rec = {
        "kind": kind,
        "scenario": scenario,
        "kappa": over["synth-kappa"],
        "method": strategy,
        "seed": seed,
        "rounds": over["num-server-rounds"],
        "modes": list(modes),
        "final": curve[-1],
        "curve": curve,
        "gate_accuracy": run_gate_accuracy(run_dir),
        "gate_unseen": run_gate_accuracy(run_dir, "gate-unseen"),
        "per_case": per_case_records(run_dir),
        "train_seconds_per_round": [round(s, 2) for s in seconds],
        "run_dir": str(run_dir),
    }
    if overlay:
        rec["overlay"] = str(save_overlay(run_dir, out / "overlays" / f"{scenario}-{strategy}-seed{seed}.npz"))
    return rec


def ablation_job(size: BenchSize, name: str, change: dict, seed: int, out: Path, scenario: str = "S2") -> dict:
    change = dict(change)
    slug = "".join(c if c.isalnum() else "-" for c in name)[:40]
    run_dir = out / "runs" / f"ablation-{scenario}-{slug}-seed{seed}"
    run({**size.base_overrides(seed, scenario), "strategy": "uharmony", "run-dir": fresh_dir(run_dir), **change})
    curve, seconds = run_curve(run_dir, ("oracle", "gated"))
    return {
        "kind": "ablation",
        "scenario": scenario,
        "variant": name,
        "change": change,
        "seed": seed,
        "final": {m: curve[-1][m] for m in ("oracle", "gated")},
        "gate_accuracy": run_gate_accuracy(run_dir),
        "gate_unseen": run_gate_accuracy(run_dir, "gate-unseen"),
        "train_seconds_per_round": [round(s, 2) for s in seconds],
    }


def unseen_job(size: BenchSize, scenario: str, strategy: str, seed: int, held_out: int, out: Path) -> dict:
    """Leave partition ``held_out`` out of training, then segment its validation scans dataset-free.

    U-Harmony first computes the held-out site's harmonization statistics from its unlabeled training
    scans (``uharmony.model.inference.estimate_site_statistics``: no label, no gradient); FedAvg's global model
    is used as is.
    FedBN has no global normalization layers: the unseen site gets the mean of the training sites' own.
    """
    run_dir = out / "runs" / f"unseen-{scenario}-{strategy}-hold{held_out}-seed{seed}"
    over = {
        **size.base_overrides(seed, scenario),
        "strategy": strategy,
        "eval-every": size.rounds,
        "run-dir": fresh_dir(run_dir),
        "num-domains": SCENARIO_SITES,
    }
    sites = len(load_federation(ensure_federation(RunConfig.from_flwr(over), progress=False)).sites)
    run(over, node_configs=[{"partition-id": p} for p in range(sites) if p != held_out])
    cfg = RunConfig.from_flwr(over)
    mean_local = None
    if STRATEGIES[strategy].keep_local and STRATEGIES[strategy].head != "gated":  # FedBN: the sites' mean
        mean_local = mean_local_state(run_dir)
    job = site_view(run_dir, held_out, cfg, saved=mean_local)
    rec = {
        "kind": "unseen",
        "scenario": scenario,
        "method": strategy,
        "seed": seed,
        "held_out": job.site.name,
        "val_cases": len(job.data.val),
        "calibration_scans": len(job.data.train),
        "uncalibrated": region_dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size)),
    }
    if any(isinstance(m, UHarmonyNorm) for m in job.model.modules()):  # statistics from unlabeled scans
        t0 = time.time()
        estimate_site_statistics(job.model, [(it["image"], it["present"]) for it in job.data.train], cfg.patch_size)
        rec["calibration_seconds"] = round(time.time() - t0, 2)
        rec["calibrated"] = region_dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size))
    if uses_scan_gate(job.model) and job.model.head.residual:  # the gate with and without "none of these"
        head, items = job.model.head, job.data.val
        rec["beyond_reach"] = float(
            head.beyond_reach(scan_descriptors(job.model, items, cfg.patch_size)).float().mean()
        )
        default, head.unseen = head.unseen, "shared" if head.unseen == "nearest" else "nearest"
        rec[f"unseen_{head.unseen}"] = region_dice(evaluate_cases(job.model, items, None, cfg.patch_size))
        head.unseen = default
    rec["dice"] = rec.get("calibrated", rec["uncalibrated"])
    rec["training_sites_final"] = dict(run_curve(run_dir)[0][-1]["gated"])
    return rec


def save_overlay(run_dir: Path, path: Path) -> Path:
    """Mid-lesion axial slice of each site's first validation case: FLAIR, ground truth, dataset-free prediction."""
    cfg = RunConfig.from_flwr(json.loads((run_dir / "config.json").read_text()))
    arrays = {}
    for pid in range(len(load_federation(federation_root(cfg)).sites)):
        job = site_view(run_dir, pid, cfg)
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
    """Bytes a site sends per round under each strategy: the ArrayRecord of the entries its roles let leave."""
    rows = {}
    for strategy in ("fedavg", "fedprox", "fedbn", "uharmony", "local"):
        cfg = RunConfig.from_flwr({**size.base_overrides(0), "strategy": strategy})
        model = cfg.build_model(SCENARIO_SITES)
        roles, state = ModelRoles(model, strategy), model.state_dict()
        full = ArrayRecord(subset(state, state.keys())).count_bytes()
        sent = ArrayRecord(subset(state, roles.outgoing_keys(0 if model.gated else None))).count_bytes()
        rows[strategy] = {"sent_bytes": sent, "full_model_bytes": full}
    return {"kind": "bytes", "per_strategy": rows}


def flower_ratio_job(size: BenchSize, out: Path, strategy: str = "uharmony") -> dict:
    """Per-round training time under Flower's simulation runtime (Ray workers, messages) over the in-process
    transport doing the same work: the same round engine and ClientApp, the same seed, sites and steps."""
    over = {
        **size.base_overrides(size.seeds[0]),
        "strategy": strategy,
        "num-server-rounds": size.flower_rounds,
        "eval-every": size.flower_rounds,
    }
    bare_dir, flower_dir = out / "runs" / f"ratio-inprocess-{strategy}", out / "runs" / f"ratio-flower-{strategy}"
    bare = run({**over, "run-dir": fresh_dir(bare_dir)})
    t0 = time.time()
    flower = run({**over, "run-dir": fresh_dir(flower_dir)}, transport="flower")
    wall = time.time() - t0
    train = [r for r in RunLog(flower_dir).records() if r.get("event") == "train"]
    f_s, b_s = run_curve(flower_dir)[1], run_curve(bare_dir)[1]
    sent = [v for r in train for v in (r.get("update-bytes") or {}).values() if v]
    return {
        "kind": "flower_ratio",
        "strategy": strategy,
        "rounds": size.flower_rounds,
        "flower_round_seconds": [round(x, 2) for x in f_s],
        "bare_round_seconds": [round(x, 2) for x in b_s],
        "ratio_median": round(float(np.median(f_s) / np.median(b_s)), 3),
        "ratio_after_first": round(float(np.median(f_s[1:]) / np.median(b_s[1:])), 3) if len(f_s) > 1 else None,
        "flower_wall_seconds": round(wall, 1),
        "update_bytes_per_site": int(np.median(sent)) if sent else None,
        "dice_flower": flower["summary"],
        "dice_bare": bare["summary"],
    }


def memory_job(size: BenchSize, strategy: str, out: Path) -> dict:
    """Peak resident memory of a fresh client process doing one site's round (``client_memory``)."""
    over = {
        **size.base_overrides(size.seeds[0]),
        "strategy": strategy,
        "run-dir": str(out / "runs" / f"memory-{strategy}"),
    }
    cmd = [sys.executable, "-m", "simulation.bench.client_memory", json.dumps(over)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"client memory probe failed:\n{proc.stderr[-2000:]}")
    return {"kind": "memory", "strategy": strategy, **json.loads(proc.stdout.strip().splitlines()[-1])}


def scale_job(size: BenchSize, out: Path, strategy: str = "uharmony") -> dict:
    """One Flower round (train + evaluate) with the FeTS partitioning_1 site count on the generator."""
    from simulation.embedded import embedded_federation

    seed = size.seeds[0]
    t0 = time.time()
    embedded_federation(size.scale_sites, size.scale_cases, seed, size.scale_spacing, progress=False)
    gen_s = time.time() - t0
    run_dir = out / "runs" / f"scale-{size.scale_sites}-sites"
    over = {
        "seed": seed,
        "synth-scenario": "",  # the development federation, at FeTS's site count
        "synth-sites": size.scale_sites,
        "synth-cases-per-site": size.scale_cases,
        "synth-spacing": size.scale_spacing,
        "spacing": size.scale_spacing,
        "num-server-rounds": 1,
        "local-steps": size.scale_steps,
        "patch-size": size.patch_size,
        "filters": size.filters,
        "strategy": strategy,
        "run-dir": fresh_dir(run_dir),
    }
    t0 = time.time()
    res = run(over, transport="flower")
    wall = time.time() - t0
    recs = RunLog(run_dir).records()
    train = next(r for r in recs if r.get("event") == "train")
    evaluated = {r["site"] for r in recs if "dice" in r}
    sent = [v for v in (train.get("update-bytes") or {}).values() if v]
    return {
        "kind": "scale",
        "strategy": strategy,
        "sites": size.scale_sites,
        "cases_per_site": size.scale_cases,
        "local_steps": size.scale_steps,
        "generation_seconds": round(gen_s, 1),
        "round_wall_seconds": round(wall, 1),
        "train_round_seconds": train["seconds"],
        "accepted": len(train["sites"]),
        "rejected": len(train["rejected"]),
        "evaluated_sites": len(evaluated),
        "bytes_received_by_server": int(sum(sent)),
        "dice": res["summary"],
    }

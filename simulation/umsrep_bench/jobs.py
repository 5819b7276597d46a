"""The UMS-Rep evidence's jobs and sizes. Every job trains through ``simulation.runner.run`` (the product's
round engine and ClientApp, in-process) and reads its figures back from the run folder the product writes.

The design was fixed before any result was seen (docs/umsrep.md says so): scenario S1 (one labelling
convention: the label fractions measure what labels buy, not S2's conflicts), the benchmark's default size
(8 cases per site, 3 mm, patch 24, DynUNet 8-16-32-64, 20 rounds x 25 local steps for phase F and for phase
P), U-Harmony, labelled sites drawn per seed (``simulation.label_fraction``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from simulation.kit.runs import fresh_dir, score_every_site
from uharmony.federation.config import RunConfig
from uharmony.files import read_jsonl
from uharmony.vocabulary import PLANS_VERSION

from ..bench.sizes import SCENARIO_SITES
from ..embedded import ensure_federation
from ..label_fraction import label_free_view, pick_labelled
from ..runner import run

ARMS = ("scratch", "all", "labelled")  # no phase P | phase P on every site | phase P on the labelled sites only
MATCHED = "scratch-matched"  # no phase P, but phase P's planned site-steps added as fine-tuning rounds


@dataclass(frozen=True)
class Size:
    name: str
    seeds: tuple[int, ...]  # the paired part: fractions ``paired_fractions``
    paired_fractions: tuple[float, ...]
    curve_fractions: tuple[float, ...]  # seed ``seeds[0]`` only
    strategy_seeds: tuple[int, ...]  # the strategies table (at ``strategy_fraction``)
    strategy_fraction: float
    cases_per_site: int
    spacing: float
    patch_size: int
    filters: str
    rounds: int
    local_steps: int
    eval_every: int
    pretrain_rounds: int
    pretrain_steps: int
    pretrain_eval_every: int
    workers: int = 2
    scenario: str = "S1"
    unseen_seeds: tuple[int, ...] = (0,)  # leave-one-site-out, every site in turn
    lr: float = 2e-3  # the regime docs/umsrep.md was measured at (the product default moved to 5e-3 after it)
    compute_matched: bool = False  # + scratch given phase P's site-steps as extra fine-tuning rounds
    reference: bool = False  # the federation with its noise-free references (denoising scored against them)
    scratch_controls: bool = False  # the strategies table: a scratch run of every plan, not only joint
    fixed_population: bool = False  # + every site's validation scans scored after phase F (label-free sites too)

    def base(self, seed: int) -> dict:
        return {
            "seed": seed,
            "synth-scenario": self.scenario,
            "synth-cases-per-site": self.cases_per_site,
            "synth-spacing": self.spacing,
            "spacing": self.spacing,
            "patch-size": self.patch_size,
            "filters": self.filters,
            "lr": self.lr,
            "device": "cpu",
            "channels-last": False,  # the layout its recorded runs used (UMS-Rep's own steps ignore it anyway)
            **({"synth-reference": True} if self.reference else {}),
        }


DEFAULT = Size(
    "default",
    seeds=(0, 1, 2, 3, 4),
    paired_fractions=(0.25, 1.0),
    curve_fractions=(0.125, 0.5),
    strategy_seeds=(0,),
    strategy_fraction=0.25,
    cases_per_site=8,
    spacing=3.0,
    patch_size=24,
    filters="8,16,32,64",
    rounds=20,
    local_steps=25,
    eval_every=4,
    pretrain_rounds=20,
    pretrain_steps=25,
    pretrain_eval_every=5,
)
QUICK = Size(
    "quick",
    seeds=(0,),
    paired_fractions=(0.25,),
    curve_fractions=(),
    strategy_seeds=(0,),
    strategy_fraction=0.25,
    cases_per_site=3,
    spacing=6.0,
    patch_size=16,
    filters="8,16,32",
    rounds=2,
    local_steps=2,
    eval_every=1,
    pretrain_rounds=2,
    pretrain_steps=2,
    pretrain_eval_every=1,
    workers=1,
    unseen_seeds=(),
    fixed_population=True,  # the scorer's path in a quick run
)
# design v2 (issue 34, registered in docs/method.md before it runs): 10 seeds, the product's learning rate,
# phase P to its plateau (the stop rule within 60 rounds), a compute-matched scratch arm, a scratch control of
# every plan on 3 seeds, leave-one-site-out on 3 seeds, denoising against the noise-free references
V2 = replace(
    DEFAULT,
    name="v2",
    seeds=tuple(range(10)),
    curve_fractions=(),
    strategy_seeds=(0, 1, 2),
    pretrain_rounds=60,
    unseen_seeds=(0, 1, 2),
    lr=5e-3,
    compute_matched=True,
    reference=True,
    scratch_controls=True,
    fixed_population=True,
)
SIZES = {"default": DEFAULT, "quick": QUICK, "v2": V2}
STRATEGIES = ("full", "joint", "alternating", "independent", "independent-head")
# plans version 2 (uharmony.umsrep.plans): before it independent and alternating gave segmentation half the
# steps; "independent" trained the heads only and "independent-decoder" the decoder too (report.LEGACY_PLANS)


def federation(size: Size, seed: int) -> Path:
    return ensure_federation(RunConfig.from_flwr(size.base(seed)), progress=False)


def _site_names(size: Size, seed: int) -> list[str]:
    from uharmony.data import load_federation

    return [s.name for s in load_federation(federation(size, seed), seed=seed).sites]


def labelled_sites(size: Size, seed: int, fraction: float) -> list[str]:
    return pick_labelled(_site_names(size, seed), fraction, seed)


def _view(size: Size, seed: int, labelled: list[str], out: Path) -> Path:
    folder = out / "views" / f"seed{seed}-{'-'.join(labelled)}"
    if not (folder / "federation.json").is_file():
        label_free_view(federation(size, seed), folder, labelled)
    return folder


def _train_cost(records: list[dict]) -> tuple[float, list[dict]]:
    """(site-seconds of training, per-round records)."""
    trains = [r for r in records if r.get("event") == "train"]
    total = sum(float(v or 0) for r in trains for v in (r.get("site-seconds") or {}).values())
    return total, trains


def pretrain_job(size: Size, seed: int, sites: str, out: Path) -> dict:
    """Phase P at ``seed`` on every site (``sites="all"``) or on the labelled sites of a fraction
    (``sites="labelled-<fraction>"``; the other sites are not in the federation at all)."""
    base = federation(size, seed)
    if sites == "all":
        root = base
    else:
        labelled = labelled_sites(size, seed, float(sites.split("-", 1)[1]))
        root = out / "views" / f"seed{seed}-only-{'-'.join(labelled)}"
        if not (root / "federation.json").is_file():
            doc = json.loads((base / "federation.json").read_text())
            from uharmony.data.manifest import write_manifest

            kept = [s for s in doc["sites"] if s["name"] in labelled]
            write_manifest(root, doc.get("kind", ""), kept, root=doc.get("root", str(base)))
    run_dir = out / "runs" / f"pretrain-{sites}-seed{seed}"
    over = {
        **size.base(seed),
        "data-root": str(root),
        "phase": "pretrain",
        "num-server-rounds": size.pretrain_rounds,
        "local-steps": size.pretrain_steps,
        "eval-every": size.pretrain_eval_every,
        "run-dir": fresh_dir(run_dir),
    }
    run(over)
    records = read_jsonl(run_dir / "metrics.jsonl")
    seconds, trains = _train_cost(records)
    final = max((r["round"] for r in records if r.get("event") == "denoise"), default=0)
    return {
        "kind": "pretrain",
        "seed": seed,
        "sites": sites,
        "rounds": len(trains),
        "site_seconds": round(seconds, 1),
        "denoise": [r for r in records if r.get("event") == "denoise" and r["round"] == final],
        "curve": [r for r in records if r.get("event") == "denoise-mean"],
        "artifact": str(run_dir / "umsrep.pt"),
    }


def matched_rounds(size: Size, seed: int, labelled: int) -> int:
    """Extra fine-tuning rounds that give the labelled sites phase P's planned site-steps (every site, every
    planned round): ceil(pretrain_rounds x pretrain_steps x sites / (labelled x local_steps))."""
    import math

    sites = len(_site_names(size, seed))
    return math.ceil(size.pretrain_rounds * size.pretrain_steps * sites / (labelled * size.local_steps))


def finetune_job(size: Size, seed: int, fraction: float, arm: str, out: Path, plan="full", tasks="") -> dict:
    """Phase F at ``seed`` with ``fraction`` of the sites labelled, from ``arm``'s starting point."""
    labelled = labelled_sites(size, seed, fraction)
    view = _view(size, seed, labelled, out)
    tag = f"finetune-f{fraction:g}-{arm}-{plan}{'-' + tasks if tasks else ''}-seed{seed}"
    run_dir = out / "runs" / tag
    rounds = size.rounds + (matched_rounds(size, seed, len(labelled)) if arm == MATCHED else 0)
    over = {
        **size.base(seed),
        "data-root": str(view),
        "num-server-rounds": rounds,
        "local-steps": size.local_steps,
        "eval-every": size.eval_every,
        "finetune": plan,
        "tasks": tasks,
        "run-dir": fresh_dir(run_dir),
    }
    if arm not in ("scratch", MATCHED):
        source = "all" if arm == "all" or fraction >= 1 else f"labelled-{fraction:g}"
        over["umsrep"] = str(out / "runs" / f"pretrain-{source}-seed{seed}" / "umsrep.pt")
    run(over)
    records = read_jsonl(run_dir / "metrics.jsonl")
    seconds, trains = _train_cost(records)
    curve: dict[int, list[float]] = {}
    per_site: dict[int, dict[str, list[float]]] = {}
    presence: dict[int, list[float]] = {}
    auroc: dict[int, list[float]] = {}
    for r in records:
        if "dice" in r and r.get("mode") == "gated" and "phase" not in r:
            curve.setdefault(r["round"], []).append(float(r["dice"]))
            per_site.setdefault(r["round"], {}).setdefault(r["site"], []).append(float(r["dice"]))
            if "presence-accuracy" in r:
                presence.setdefault(r["round"], []).append(float(r["presence-accuracy"]))
            if "presence-auroc" in r:
                auroc.setdefault(r["round"], []).append(float(r["presence-auroc"]))
    fixed = {}
    if size.fixed_population:  # the same five sites for every arm and fraction: scored, never trained on
        fixed = score_every_site(run_dir, RunConfig.from_flwr({**over, "data-root": str(federation(size, seed))}))
    return {
        "kind": "finetune",
        "seed": seed,
        "fraction": fraction,
        "labelled": labelled,
        "arm": arm,
        "plan": plan,
        "plans": PLANS_VERSION,
        "tasks": tasks,
        **({"presence_pool": RunConfig.from_flwr(over).presence_pool} if tasks else {}),
        "curve": {str(k): sum(v) / len(v) for k, v in sorted(curve.items())},
        # each scored site's mean Dice at the last round (a fixed population can be chosen afterwards)
        "finals": {s: sum(v) / len(v) for s, v in per_site[max(per_site)].items()} if per_site else {},
        **({"fixed": fixed} if fixed else {}),
        "presence": {str(k): sum(v) / len(v) for k, v in sorted(presence.items())},
        "presence_auroc": {str(k): sum(v) / len(v) for k, v in sorted(auroc.items())},
        "site_seconds": round(seconds, 1),
        "bytes_per_round": max((sum((r.get("update-bytes") or {}).values()) for r in trains), default=0),
        "full_model_bytes": trains[-1]["full-model-bytes"] if trains else None,
        "sites_per_round": max((len(r["sites"]) for r in trains), default=0),
    }


def plan(size: Size) -> tuple[list[tuple], list[tuple]]:
    """(phase-P jobs, phase-F jobs) as call tuples; the second stage needs the first's artifacts."""
    pre, fine = [], []
    for seed in size.seeds:
        pre.append(("pretrain", seed, "all"))
        for f in size.paired_fractions:
            if f < 1:
                pre.append(("pretrain", seed, f"labelled-{f:g}"))
            for arm in ARMS if f < 1 else ARMS[:2]:
                fine.append(("finetune", seed, f, arm, "full", ""))
            if size.compute_matched and f < 1:
                fine.append(("finetune", seed, f, MATCHED, "full", ""))
    first = size.seeds[0]
    for f in size.curve_fractions:
        pre.append(("pretrain", first, f"labelled-{f:g}"))
        fine += [("finetune", first, f, arm, "full", "") for arm in (ARMS if f < 1 else ARMS[:2])]
    for seed in size.unseen_seeds:  # every scenario has SCENARIO_SITES sites (simulation.synth.scenarios)
        held_out = range(SCENARIO_SITES)
        fine += [("unseen", seed, held, arm, "full", "") for held in held_out for arm in ("scratch", "all")]
    for seed in size.strategy_seeds:
        f = size.strategy_fraction
        controls = STRATEGIES if size.scratch_controls else ("joint",)
        fine += [("finetune", seed, f, "scratch", p, "presence") for p in controls]
        fine += [("finetune", seed, f, "all", p, "presence") for p in STRATEGIES]
    return list(dict.fromkeys(pre)), list(dict.fromkeys(fine))


def scan_noise(size: Size, seed: int) -> dict[str, float]:
    """Per site: the noise already in its preprocessed validation scans, estimated robustly from neighbouring
    voxels (1.4826 x median |x_i - x_i+1| / sqrt(2) on brain voxels, mean over modalities and scans). Edges and
    texture count too, so it bounds the noise from above; it is in the same brain-SD units as phase P's sigma."""
    import math

    import torch

    from uharmony.data import SiteData, load_federation

    out = {}
    for site in load_federation(federation(size, seed), seed=seed).sites:
        data = SiteData(site, size.spacing, size.patch_size, cache_dir=None)
        values = []
        for item in data.val:
            for channel in torch.as_tensor(item["image"]).float():
                inside = (channel[1:] != 0) & (channel[:-1] != 0)
                diff = (channel[1:] - channel[:-1])[inside]
                if diff.numel():
                    values.append(1.4826 * float(diff.abs().median()) / math.sqrt(2))
        out[site.name] = round(sum(values) / len(values), 3) if values else None
    return out


def unseen_job(size: Size, seed: int, held_out: int, arm: str, out: Path) -> dict:
    """Leave-one-site-out: phase F (full, every weight) on the other sites, all labelled; then the held-out
    hospital segments its validation scans dataset-free, with statistics calibrated on its own scans (no
    label). ``arm``: ``scratch`` (no phase P) or ``all`` (phase P on every site, the held-out one included
    as a label-free participant: what its scans gave the representation)."""
    from simulation.kit.runs import region_dice, site_view
    from uharmony.model.inference import estimate_site_statistics
    from uharmony.model.training import evaluate_cases

    names = _site_names(size, seed)
    run_dir = out / "runs" / f"unseen-hold{held_out}-{arm}-seed{seed}"
    over = {
        **size.base(seed),
        "data-root": str(federation(size, seed)),
        "num-server-rounds": size.rounds,
        "local-steps": size.local_steps,
        "eval-every": size.rounds,
        "num-domains": len(names),
        "run-dir": fresh_dir(run_dir),
    }
    if arm == "all":
        over["umsrep"] = str(out / "runs" / f"pretrain-all-seed{seed}" / "umsrep.pt")
    run(over, node_configs=[{"partition-id": p} for p in range(len(names)) if p != held_out])
    cfg = RunConfig.from_flwr(over)
    job = site_view(run_dir, held_out, cfg)
    rec = {"kind": "unseen", "seed": seed, "held_out": job.site.name, "arm": arm, "val_cases": len(job.data.val)}
    rec["uncalibrated"] = region_dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size))
    estimate_site_statistics(job.model, [(it["image"], it["present"]) for it in job.data.train], cfg.patch_size)
    rec["calibrated"] = region_dice(evaluate_cases(job.model, job.data.val, None, cfg.patch_size))
    return rec


def run_call(size: Size, call: tuple, out: Path) -> dict:
    if call[0] == "pretrain":
        return pretrain_job(size, call[1], call[2], out)
    if call[0] == "unseen":
        return unseen_job(size, call[1], call[2], call[3], out)
    return finetune_job(size, call[1], call[2], call[3], out, call[4], call[5])


def size_dict(size: Size) -> dict:
    return asdict(size)

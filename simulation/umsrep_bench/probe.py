"""Does phase P's pretext teach the deep layers? A linear probe of the frozen bottleneck (issue 34, item 1).

    python -m simulation.umsrep_bench.probe                      # pilot seeds 0 1 2 -> runs/umsrep-probe
    python -m simulation.umsrep_bench.probe --seeds 10 11 ... --page docs/umsrep-probe.md

Design (registered 2026-12-07 in this module and docs/method.md before it first ran):

- data: the UMS-Rep bench's federation (scenario S1, 5 sites, 8 cases per site, 3 mm; ``jobs.DEFAULT``);
- arms, from the same initial weights (the run's seed) and the same batches: ``random`` (no phase P),
  ``denoise`` (the product's phase P) and ``denoise+inpaint`` (half the batches also have cubes blanked);
  phase P central (Flower-free: one trunk, batches from the sites in turn), ``--steps`` steps at lr 2e-3,
  Rician noise at 0.1/0.2/0.3 brain SD, batch 2, patch 24;
- probe: ``--patches`` fixed patches of each validation case (half centred on tumour, half on background,
  drawn from the seed), the pooled bottleneck the presence head reads (average and max), standardized;
  L2-regularized logistic regression (LBFGS, weight 1e-2), 5-fold cross-validated; the estimand is the
  AUROC of whole-tumour presence, beside the accuracy and the majority rate;
- rule: ``denoise+inpaint`` becomes the documented recommendation if its mean AUROC over the pilot seeds
  0-2 is at least 0.05 above ``denoise``'s; it then must hold on fresh seeds (10-19) before any default
  changes. A pretext "needs the deep layers" when its AUROC is above the ``random`` arm's.
- second pilot (registered 2026-12-07 before it ran, the review's "phase P without the top skip connections,
  or with them dropped at random"): arm ``denoise+skipdrop`` (the top 2 skip connections each zeroed for half
  the samples), run with a fresh ``denoise`` arm on the same code into a new ``--out`` (the first pilot's records
  name no commit and predate the magnitude floor); the same rule against that ``denoise``: at least 0.05 mean
  AUROC above it on pilot seeds 0-2 makes it the recommendation, fresh seeds 10-19 before any default.
- pooling pilot (registered 2026-12-07 before it ran; issue 34 item 3, "several scales pooled"): ``--pool
  multiscale`` reads the encoder at every scale (DynUNet's input block, each downsampling block and the
  bottleneck, each pooled by mean and max, concatenated) instead of the bottleneck alone; arms ``random`` and
  ``denoise``, pilot seeds 0-2, both poolings in one ``--out``. Rule: ``denoise`` at every scale ≥ 0.05 mean
  AUROC above ``denoise`` at the bottleneck gives the presence head a multi-scale option (fresh seeds 10-19
  before it becomes the default). Met on the pilot (+0.234). Confirmation (registered 2026-12-07 before it
  ran): seeds 10-19, the same arms and poolings, one thread; multiscale becomes the default if the paired
  difference (denoise at every scale - denoise at the bottleneck) has a mean >= +0.05 and its 95 % interval
  above 0.
- robustness of that decision (registered 2026-12-07 before it ran): seeds 10-19 again with whole cases held
  out (``--folds case``) and every readout on 128 principal components (``--dims 128``, the bottleneck's
  width); the default stands if the same difference keeps its 95 % interval above 0.

Each (seed, arm, pool) is a JSONL record in ``--out``/probe.jsonl, written as it is made; ``--page`` writes the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from uharmony.files import append_jsonl, read_jsonl

from ..kit.page import publish

ARMS = ("random", "denoise", "denoise+inpaint", "denoise+skipdrop")
POOLS = ("bottleneck", "multiscale")  # what the probe reads (records without "pool": the bottleneck)
CHALLENGERS = ("denoise+inpaint", "denoise+skipdrop")  # each judged against ``denoise`` by the rule above
PILOT = (0, 1, 2)
CONFIRM = tuple(range(10, 20))  # the pooling rule's fresh seeds


def _features(model, items: list[dict], roi: int, seed: int, per_case: int, pool: str = "bottleneck", neg: int = 1):
    """(pooled encoder features (N, 2C), WT presence (N,), each patch's case (N,)) on fixed patches of
    ``items`` (half centred on tumour, half on background; ``neg=0``: all on tumour): the bottleneck's
    (``pool="bottleneck"``, what the presence head reads) or every encoder scale's, concatenated (``multiscale``)."""
    import torch
    from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

    from uharmony.model.task_heads import bottleneck_of, encoder_levels
    from uharmony.umsrep.training import presence_targets

    pad = SpatialPadd(keys=["image", "label"], spatial_size=(roi,) * 3)
    crop = RandCropByPosNegLabeld(
        keys=["image", "label"], label_key="label", spatial_size=(roi,) * 3, pos=1, neg=neg, num_samples=per_case
    )
    crop.set_random_state(seed=seed)
    feats, targets, groups, caught = [], [], [], {}
    modules = [bottleneck_of(model.backbone)[0]] if pool == "bottleneck" else encoder_levels(model.backbone)
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: caught.__setitem__(k, o)) for k, m in enumerate(modules)]
    model.eval()
    try:
        with torch.no_grad():
            for item in items:
                patches = crop(pad({"image": item["image"], "label": item["label"]}))
                x = torch.stack([torch.as_tensor(p["image"]) for p in patches])
                y = torch.stack([torch.as_tensor(p["label"]) for p in patches])
                present = torch.as_tensor(item["present"]).view(1, -1).expand(len(patches), -1)
                model.features(x, present)
                flat = [caught[k].flatten(2) for k in range(len(modules))]
                feats.append(torch.cat([f.mean(2) for f in flat] + [f.amax(2) for f in flat], 1))
                wt = list(model.regions).index("WT")
                targets.append(presence_targets(y)[:, wt])
                groups.append(torch.full((len(patches),), len(groups)))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(feats), torch.cat(targets), torch.cat(groups)


def fold_splits(n: int, folds: int, seed: int, groups=None) -> list:
    """(held-out rows, training rows) per fold: rows at random, or (``groups``: one id per row) whole groups."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    splits = []
    if groups is None:
        order = torch.randperm(n, generator=gen)
        for k in range(folds):
            test = order[k::folds]
            splits.append((test, order[torch.isin(order, test, invert=True)]))
        return splits
    ids = torch.unique(groups)
    ids = ids[torch.randperm(len(ids), generator=gen)]
    for k in range(folds):
        held = torch.isin(groups, ids[k::folds])
        splits.append((torch.nonzero(held).flatten(), torch.nonzero(~held).flatten()))
    return splits


def linear_probe(
    x, y, folds: int = 5, seed: int = 0, l2: float = 1e-2, groups=None, dims: int = 0, scores: bool = False
) -> dict:
    """Cross-validated logistic regression: accuracy and AUROC of the held-out folds' predictions.
    ``groups`` (one id per row, e.g. its case): whole groups are held out together (no patch of a held-out
    case in training). ``dims`` > 0: the standardized features are projected on their first ``dims``
    principal components, fitted on the training fold only (readouts of different widths compared alike).
    ``scores``: the held-out logit of every row too (``"scores"``)."""
    import torch
    from monai.metrics import compute_roc_auc

    splits = fold_splits(len(y), folds, seed, groups)
    held_out = torch.zeros(len(y))
    for test, train in splits:
        if not len(test):
            continue
        mean, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        xt, xs = (x[train] - mean) / sd, (x[test] - mean) / sd
        if 0 < dims < x.shape[1]:
            _, _, v = torch.linalg.svd(xt, full_matrices=False)
            xt, xs = xt @ v[:dims].T, xs @ v[:dims].T
        w = torch.zeros(xt.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure(xt=xt, yt=y[train], w=w, b=b, opt=opt):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w @ w)
            loss.backward()
            return loss

        opt.step(closure)
        held_out[test] = (xs @ w + b).detach()
    majority = float(max(y.mean(), 1 - y.mean()))
    both = 0 < float(y.sum()) < len(y)
    return {
        "accuracy": float(((held_out > 0).float() == y).float().mean()),
        "auroc": float(compute_roc_auc(held_out, y)) if both else float("nan"),
        "majority": majority,
        "patches": len(y),
        **({"scores": held_out} if scores else {}),
    }


def central_phase_p(seed: int, pretext: str | None, steps: int, reference: bool = False, overrides=None):
    """(run config, the sites' data, model, mean loss) after ``steps`` central phase-P steps with ``pretext``
    (None: the initial weights) on the bench's federation of ``seed`` (``overrides``: run-config keys on top of
    the bench's, e.g. another scenario); batches from the sites in turn."""
    import torch

    from uharmony.data import SiteData, load_federation
    from uharmony.federation.config import RunConfig
    from uharmony.umsrep.training import pretrain_steps

    from ..embedded import ensure_federation
    from .jobs import DEFAULT

    cfg = RunConfig.from_flwr(
        {**DEFAULT.base(seed), "phase": "pretrain", "synth-reference": reference, **(overrides or {})}
    )
    fed = load_federation(ensure_federation(cfg, progress=False))
    sites = [SiteData(s, cfg.spacing, cfg.patch_size) for s in fed.sites]
    model = cfg.build_model(len(sites))
    loss = None
    if pretext is not None:
        streams = [s.scan_batches(cfg.batch_size, steps, seed + i) for i, s in enumerate(sites)]
        batches = (next(streams[i % len(streams)]) for i in range(steps))
        torch.manual_seed(seed)
        loss = pretrain_steps(model, batches, cfg.noise, cfg.noise_levels, DEFAULT.lr, seed, pretext=pretext)["loss"]
    return cfg, sites, model, loss


def _readout(r: dict) -> tuple[str, str, int]:
    """How a record read its trunk: (pool, folds, dims); records without the keys: the registered readout."""
    return r.get("pool", "bottleneck"), r.get("folds", "patch"), int(r.get("dims", 0))


def run_arm(seed: int, arm: str, steps: int, per_case: int, pools=("bottleneck",), folds="patch", dims=0) -> list[dict]:
    """One record per pooling, every one read from the same trained trunk and the same patches. ``folds``
    "case": the probe's folds hold out whole cases; ``dims``: every readout projected on that many principal
    components (fitted in the training fold) where it is wider."""
    import torch

    from ..kit.machine import commit, machine

    t0 = time.time()
    cfg, sites, model, loss = central_phase_p(seed, None if arm == "random" else arm, steps)
    trained = time.time() - t0
    out = []
    for pool in pools:
        t0 = time.time() - trained  # each record: the training's seconds plus its own reading's
        x, y, cases = _features(model, [it for s in sites for it in s.val], cfg.patch_size, seed, per_case, pool)
        probe = linear_probe(x, y, seed=seed, groups=cases if folds == "case" else None, dims=dims)
        out.append({"seed": seed, "arm": arm, "steps": 0 if arm == "random" else steps, "train_loss": loss,
                    **probe, "seconds": round(time.time() - t0, 1), "machine": machine(), "commit": commit(),
                    "threads": torch.get_num_threads(), **({} if pool == "bottleneck" else {"pool": pool}),
                    **({} if folds == "patch" else {"folds": folds}), **({"dims": dims} if dims else {})})  # fmt: skip
    return out


def page(records: list[dict]) -> str:
    lines = [
        "# UMS-Rep pretext probe: does phase P teach the bottleneck? (`python -m simulation.umsrep_bench.probe`)",
        "",
        "Linear probe (5-fold CV logistic regression) of whole-tumour presence from the frozen pooled bottleneck "
        "(rows 'every scale': every encoder scale pooled), after central phase P with each pretext; design and "
        "rule: the module's docstring.",
        "",
        "| arm | seeds | phase-P steps | AUROC ×100 (mean, per seed) | accuracy ×100 | majority rate ×100 |",
        "|---|---|---|---|---|---|",
    ]
    readouts = sorted({_readout(r) for r in records}, key=lambda k: (k[1] != "patch", k[2], POOLS.index(k[0])))
    for readout in readouts:
        pool, folds, dims = readout
        for arm in ARMS:
            rs = sorted((r for r in records if r["arm"] == arm and _readout(r) == readout), key=lambda r: r["seed"])
            if not rs:
                continue
            au = [r["auroc"] * 100 for r in rs]
            name = (
                arm
                + (", every scale" if pool == "multiscale" else "")
                + (", cases held out" if folds == "case" else "")
            )
            name += f", {dims} components" if dims else ""
            lines.append(
                f"| {name} | {', '.join(str(r['seed']) for r in rs)} | {rs[0]['steps']} | {statistics.fmean(au):.1f} "
                f"({', '.join(f'{a:.1f}' for a in au)}) | {statistics.fmean(r['accuracy'] * 100 for r in rs):.1f} | "
                f"{statistics.fmean(r['majority'] * 100 for r in rs):.1f} |"
            )
    sensitivity = [r for r in records if _readout(r)[1:] != ("patch", 0)]
    records = [r for r in records if _readout(r)[1:] == ("patch", 0)]  # the registered readout: the rules below
    unrecorded = "not recorded (the pilot of 2026-12-07: Intel Xeon, 2 cores)"
    machines = sorted({r.get("machine", unrecorded) for r in records})
    lines += ["", f"Machine: {'; '.join(machines)}."]
    pilot = {
        arm: {r["seed"]: r["auroc"] for r in records if r["arm"] == arm and r["seed"] in PILOT and "pool" not in r}
        for arm in ARMS
    }
    for arm in CHALLENGERS:
        if not all(len(pilot[a]) == len(PILOT) for a in ("denoise", arm)):
            continue
        gain = statistics.fmean(pilot[arm].values()) - statistics.fmean(pilot["denoise"].values())
        verdict = f"met: {arm} is the recommendation" if gain >= 0.05 else "not met: no change"
        lines.append(
            f"Rule on the pilot seeds {list(PILOT)} ({arm} ≥ 0.05 AUROC above denoising): {verdict} "
            f"({gain:+.3f}; per seed " + ", ".join(f"{pilot[arm][k] - pilot['denoise'][k]:+.3f}" for k in PILOT) + ")."
        )
    multi = {r["seed"]: r["auroc"] for r in records if r["arm"] == "denoise" and r.get("pool") == "multiscale"}
    if all(k in multi and k in pilot["denoise"] for k in PILOT):
        gain = statistics.fmean(multi[k] for k in PILOT) - statistics.fmean(pilot["denoise"][k] for k in PILOT)
        verdict = "met: the presence head gets a multi-scale option" if gain >= 0.05 else "not met: no change"
        lines.append(
            f"Pooling rule on the pilot seeds {list(PILOT)} (denoise read at every scale ≥ 0.05 AUROC above it read at "
            f"the bottleneck): {verdict} ({gain:+.3f}; per seed "
            + ", ".join(f"{multi[k] - pilot['denoise'][k]:+.3f}" for k in PILOT)
            + ")."
        )
    fresh = {
        pool: {r["seed"]: r["auroc"] for r in records if r["arm"] == "denoise" and r.get("pool", "bottleneck") == pool}
        for pool in POOLS
    }
    if all(k in fresh[p] for k in CONFIRM for p in POOLS):
        from simulation.kit.stats import paired

        d = paired({k: fresh["multiscale"][k] for k in CONFIRM}, {k: fresh["bottleneck"][k] for k in CONFIRM})
        ok = d.mean >= 0.05 and d.low > 0
        verdict = "met: multiscale is the default" if ok else "not met"
        lines.append(
            f"Confirmation on the fresh seeds {CONFIRM[0]}-{CONFIRM[-1]} (denoise at every scale − at the bottleneck, "
            f"mean ≥ +0.05 AUROC with the 95 % interval above 0): {verdict}"
            f" ({d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}], {d.n} seeds)."
        )
    lines += _sensitivity_lines(sensitivity)
    return "\n".join(lines) + "\n"


def _sensitivity_lines(records: list[dict]) -> list[str]:
    """The pooling decision's robustness check (registered 2026-12-07 before it ran): on the fresh seeds, cases
    held out whole and every readout at the bottleneck's width; it holds if the difference's interval is above 0."""
    from simulation.kit.stats import paired

    out = []
    for folds, dims in sorted({_readout(r)[1:] for r in records}):
        got = {
            pool: {
                r["seed"]: r["auroc"] for r in records if r["arm"] == "denoise" and _readout(r) == (pool, folds, dims)
            }
            for pool in POOLS
        }
        if all(k in got[p] for k in CONFIRM for p in POOLS):
            d = paired({k: got["multiscale"][k] for k in CONFIRM}, {k: got["bottleneck"][k] for k in CONFIRM})
            how = ("cases held out" if folds == "case" else "patches held out") + (
                f", {dims} components" if dims else ""
            )
            out.append(
                f"Robustness of the pooling decision ({how}; denoise at every scale − at the bottleneck, seeds "
                f"{CONFIRM[0]}-{CONFIRM[-1]}): {'holds' if d.low > 0 else 'does not hold'} "
                f"({d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}], {d.n} seeds)."
            )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="umsrep-probe", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=320, help="central phase-P steps per pretext")
    p.add_argument("--patches", type=int, default=24, help="probe patches per validation case")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the arms to run (default: all)")
    p.add_argument(
        "--pool",
        choices=("bottleneck", "multiscale", "both"),
        default="bottleneck",
        help="what the probe reads: the pooled bottleneck (the presence head's input), every encoder scale, or both",
    )
    p.add_argument("--folds", choices=("patch", "case"), default="patch", help="case: hold out whole cases")
    p.add_argument("--dims", type=int, default=0, help="> 0: project wider readouts on this many principal components")
    p.add_argument("--out", type=Path, default=Path("runs/umsrep-probe"))
    p.add_argument("--page", type=Path, default=None, help="also write the table here (e.g. docs/umsrep-probe.md)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "probe.jsonl"
    records = read_jsonl(path)
    pools = ("bottleneck", "multiscale") if a.pool == "both" else (a.pool,)
    done = {(r["seed"], r["arm"], r["steps"] if r["arm"] != "random" else 0, *_readout(r)) for r in records}
    for seed in a.seeds:
        for arm in a.arms:
            steps = 0 if arm == "random" else a.steps
            missing = tuple(pool for pool in pools if (seed, arm, steps, pool, a.folds, a.dims) not in done)
            if not missing:
                continue
            for rec in run_arm(seed, arm, a.steps, a.patches, missing, a.folds, a.dims):
                append_jsonl(path, rec)
                records.append(rec)
                print(f"[probe] seed {seed} {arm} {_readout(rec)}: AUROC {rec['auroc']:.3f}, "
                      f"accuracy {rec['accuracy']:.3f} (majority {rec['majority']:.3f}), {rec['seconds']} s",
                      flush=True)  # fmt: skip
    return publish(page([r for r in records if r["seed"] in a.seeds]), a.page)


if __name__ == "__main__":
    sys.exit(main())

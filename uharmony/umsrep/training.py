"""UMS-Rep training at a site (Flower-free): denoising pretraining, statistics recalibration, multi-task
fine-tuning under a plan (``uharmony.umsrep.plans``), and the denoising scores a site reports.

Noise (ours; the paper's sigma values are not recoverable): scans are z-scored per modality on brain
voxels, so sigma is in units of the brain's intensity SD. Rician noise, the noise of MRI magnitude
images, is added to the magnitude: the channel is shifted to be non-negative on the brain (its minimum
there becomes 0), ``sqrt((m + s n1)^2 + (s n2)^2)`` is taken and the shift undone; Gaussian noise (the
paper's option) adds ``s n``. Only brain voxels of present modalities are corrupted and scored.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import SSIMMetric

from uharmony.model.norm import UHarmonyNorm
from uharmony.model.task_heads import forward_tasks, top_skips_dropped
from uharmony.model.training import make_optimizer, masked_dice_ce, optimizer_state, proximal_term, step
from uharmony.protocol import INTRINSIC_NOISE
from uharmony.umsrep.plans import Plan, module_groups
from uharmony.umsrep.type_task import TASK as TYPE
from uharmony.umsrep.type_task import type_loss

NOISES = ("rician", "gaussian")


def brain_mask(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(B, M, *spatial) bool: brain voxels (any modality non-zero) of present modalities."""
    brain = (x != 0).any(1, keepdim=True)
    pres = present.bool().view(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
    return brain & pres


def corrupt(
    x: torch.Tensor, mask: torch.Tensor, kind: str, sigma: float, generator=None, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` with ``kind`` noise of level ``sigma`` on the ``mask`` voxels. Rician noise is added to the
    magnitude ``x - floor``; ``floor`` (B, C): where a raw intensity of 0 lies in z-scored units (the data
    layer's ``floor``, the same for a patch and its whole scan); None: each channel's minimum over ``mask``
    (an approximation that differs between a patch and its scan)."""
    n1 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * sigma
    if kind == "gaussian":
        noisy = x + n1
    elif kind == "rician":
        n2 = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * sigma
        if floor is None:
            big = torch.finfo(x.dtype).max
            floor = torch.where(mask, x, torch.full_like(x, big)).flatten(2).min(2).values
            floor = torch.where(floor < big, floor, torch.zeros_like(floor))
        floor = torch.as_tensor(floor, dtype=x.dtype).to(x.device).view(*x.shape[:2], *([1] * (x.dim() - 2)))
        noisy = torch.sqrt((x - floor + n1) ** 2 + n2**2) + floor
    else:
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")
    return torch.where(mask, noisy, x)


INPAINT_CUBES, INPAINT_SIDE = 4, 0.25  # per blanked patch: cubes of a quarter of its side (ours)
SKIP_DROP_LEVELS, SKIP_DROP_P = 2, 0.5  # ``denoise+skipdrop``: each of the top 2 skips zeroed for half the samples


def blank_cubes(x: torch.Tensor, mask: torch.Tensor, generator=None) -> torch.Tensor:
    """``x`` with :data:`INPAINT_CUBES` random cubes (side :data:`INPAINT_SIDE` of the patch's smallest side)
    set to 0 (the z-scored brain mean) in every modality, on the ``mask`` voxels: the content must come from
    the surroundings, which only the deep, wide layers see (the pretext of Models Genesis' in-painting)."""
    out = x.clone()
    spatial = x.shape[2:]
    side = max(1, int(min(spatial) * INPAINT_SIDE))
    for b in range(x.shape[0]):
        for _ in range(INPAINT_CUBES):
            lo = [int(torch.randint(0, n - side + 1, (1,), generator=generator)) for n in spatial]
            region = (b, slice(None), *(slice(s0, s0 + side) for s0 in lo))
            out[region] = torch.where(mask[region], torch.zeros_like(out[region]), out[region])
    return out


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)


def _params(model, keys: set[str] | None):
    """(name, parameter) pairs to optimize; others get requires_grad False (restored by the caller)."""
    named = list(model.named_parameters())
    return [(n, p) for n, p in named if keys is None or n in keys]


class _Frozen:
    """Only ``keys`` train inside the block."""

    def __init__(self, model, keys: set[str]) -> None:
        self.model, self.keys = model, keys

    def __enter__(self):
        self.saved = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in self.keys)
        return self

    def __exit__(self, *exc) -> None:
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.saved[n])


def pretrain_steps(
    model, batches, noise: str, levels, lr: float, seed: int, device="cpu", pretext: str = "denoise", **opt
) -> dict:
    """Denoising steps: each batch corrupted at a level drawn from ``levels``; masked MSE to the clean scan.
    ``pretext`` ``denoise+inpaint``: half the batches (drawn from ``seed``) also get cubes blanked
    (:func:`blank_cubes`) that the model restores; ``denoise+skipdrop``: the top :data:`SKIP_DROP_LEVELS` skip
    connections are each zeroed for a share :data:`SKIP_DROP_P` of the samples (own draws: the noise is that of
    ``denoise`` at the same seed). ``opt``: weight_decay,
    optimizer, state (as ``uharmony.model.training.train_steps``)."""
    model.to(device).train()
    keys = module_groups(model)
    trained = keys["encoder"] | keys["decoder"] | keys["recon"]
    gen = torch.Generator().manual_seed(seed)
    losses = []
    skips = (
        top_skips_dropped(model.backbone, SKIP_DROP_LEVELS, SKIP_DROP_P, torch.Generator().manual_seed(seed + 1))
        if pretext == "denoise+skipdrop"
        else contextlib.nullcontext()
    )
    with _Frozen(model, trained), skips:
        named = _params(model, trained)
        kind, decay = opt.get("optimizer", "adamw"), opt.get("weight_decay", 1e-2)
        optim = make_optimizer(named, kind, lr, decay, opt.get("state"))
        for batch in batches:
            x = torch.as_tensor(batch["image"]).to(device)
            present = torch.as_tensor(batch["present"]).to(device)
            mask = brain_mask(x, present)
            sigma = float(levels[int(torch.randint(len(levels), (1,), generator=gen))])
            noisy = corrupt(x, mask, noise, sigma, gen, batch.get("floor"))  # the scan's magnitude floor
            if pretext == "denoise+inpaint" and bool(torch.rand((1,), generator=gen) < 0.5):
                noisy = blank_cubes(noisy, mask, gen)
            optim.zero_grad(set_to_none=True)
            loss = masked_mse(forward_tasks(model, noisy, present, want=("recon",))["recon"], x, mask)
            losses.append(step(loss, [optim], "denoising"))
    return {"loss": sum(losses) / max(len(losses), 1), "steps": len(losses), "state": optimizer_state(optim, named)}


@torch.no_grad()
def recalibrate(model, batches, device="cpu") -> int:
    """Re-estimate the site's harmonization statistics from clean scans under the current weights (forward
    passes in training mode, nothing learned); returns the number of batches used."""
    norms = [m for m in model.modules() if isinstance(m, UHarmonyNorm)]
    if not norms:
        return 0
    for m in norms:
        m.num_updates.zero_()  # a cumulative average over these batches (then the layer's momentum)
    model.to(device).train()
    used = 0
    for batch in batches:
        model.features(torch.as_tensor(batch["image"]).to(device), torch.as_tensor(batch["present"]).to(device))
        used += 1
    return used


def presence_targets(label: torch.Tensor) -> torch.Tensor:
    """(B, R) 1 where a region has a voxel in the patch."""
    return (label.flatten(2) > 0.5).any(2).float()


def masked_bce(logits: torch.Tensor, target: torch.Tensor, regions: torch.Tensor) -> torch.Tensor | None:
    mask = regions.bool().reshape(logits.shape)
    if not bool(mask.any()):
        return None
    return F.binary_cross_entropy_with_logits(logits[mask], target[mask])


def _schedule(batches, plan: Plan, tasks: list[str], alternate: int):
    """(batch, the tasks it trains) in order. Every task gets every batch (the same budget per task): joint and
    independent train all tasks on each batch (independent's tasks share no trained weight); alternating
    trains a block of ``alternate`` batches on one task, then the same block on the next."""
    if plan.schedule != "alternating":
        for batch in batches:
            yield batch, tasks
        return
    block: list = []
    for batch in batches:
        block.append(batch)
        if len(block) == max(1, alternate):
            for task in tasks:
                yield from ((b, [task]) for b in block)
            block = []
    for task in tasks if block else ():
        yield from ((b, [task]) for b in block)


@torch.no_grad()
def _set_base_rate(model, targets: torch.Tensor, regions: torch.Tensor) -> None:
    """A presence head never trained (its output layer all zero) starts at the patches' base rate: its output
    bias at logit(rate), clamped to [0.1, 0.9]; a zero bias against a 65 % rate pushes every hidden unit the
    same way at once (review 2026-12-06: 17 of 20 units died within 20 steps)."""
    last = model.tasks["presence"].net[-1]
    fresh = ~last.weight.any(1) & (last.bias == 0)  # per output row (a region added later has its own start)
    if not bool(fresh.any()):
        return
    mask = regions.bool()
    counts = mask.float().sum(0)
    rate = ((targets * mask).sum(0) / counts.clamp_min(1)).clamp(0.1, 0.9)
    last.bias.copy_(torch.where(fresh & (counts > 0), torch.logit(rate), last.bias))


def finetune_steps(model, batches, plan: Plan, domain, lr: float, task_weight=0.5, alternate=5, **opt) -> dict:
    """Phase-F steps under ``plan`` (each task sees every batch: see :func:`_schedule`). ``domain``,
    ``opt["per_case_domain"]``: as ``uharmony.model.training.train_steps``.
    ``opt``: device, weight_decay, optimizer, state, proximal_mu, reference, per_case_domain."""
    device = opt.get("device", "cpu")
    model.to(device).train()
    groups = module_groups(model)
    trained = plan.trained_keys(model)
    heads = [t for t in ("presence", TYPE) if plan.losses == "tasks" and t in model.tasks]
    tasks = ["seg", *heads]
    seg_loss = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    kind, decay, state = opt.get("optimizer", "adamw"), opt.get("weight_decay", 1e-2), opt.get("state")
    with _Frozen(model, trained):
        if plan.schedule == "independent":  # one optimizer per task over its own trained groups
            own = {"seg": trained - groups["presence"] - groups[TYPE], **{t: trained & groups[t] for t in heads}}
            named = {t: _params(model, own[t]) for t in tasks}
            optims = {t: make_optimizer(named[t], kind, lr, decay, state) for t in tasks}
        else:
            shared = _params(model, trained)
            named = dict.fromkeys(tasks, shared)
            optims = dict.fromkeys(tasks, make_optimizer(shared, kind, lr, decay, state))
        # FedProx's anchor on the step's device (the site holds it on the CPU)
        anchor = (
            {k: v.to(device) for k, v in opt["reference"].items()}
            if opt.get("proximal_mu", 0) > 0 and opt.get("reference")
            else None
        )
        losses = []
        for batch, active in _schedule(batches, plan, tasks, alternate):
            x, y = torch.as_tensor(batch["image"]).to(device), torch.as_tensor(batch["label"]).to(device)
            present, regions = batch["present"].to(device), batch["regions"].to(device)
            if "presence" in active:
                _set_base_rate(model, presence_targets(y), regions)
            dom = batch["domain"] if opt.get("per_case_domain") else domain
            out = forward_tasks(model, x, present, dom, want=tuple(active))
            loss = x.new_zeros(())
            if "seg" in active:
                loss = loss + masked_dice_ce(seg_loss, out["seg"], y, regions)
            terms = []
            if "presence" in active:
                terms.append(masked_bce(out["presence"], presence_targets(y), regions))
            if TYPE in active:
                terms.append(type_loss(out[TYPE], batch["tumour_type"], y))
            for term in (t for t in terms if t is not None):
                loss = loss + (task_weight if plan.schedule == "joint" else 1.0) * term
            if not loss.requires_grad:  # no task taught anything here (a type block without a typed patch)
                continue
            if anchor:
                loss = loss + opt["proximal_mu"] * proximal_term(model, anchor)
            chosen = list({id(optims[t]): optims[t] for t in active}.values())
            for opt_ in chosen:
                opt_.zero_grad(set_to_none=True)
            losses.append(step(loss, chosen))
        saved = {}
        for t in tasks:
            saved.update(optimizer_state(optims[t], named[t]))
    return {"loss": sum(losses) / max(len(losses), 1), "steps": len(losses), "state": saved}


def psnr(pred: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) on ``mask`` voxels, the peak being the clean scan's range there."""
    values = clean[mask]
    peak = float(values.max() - values.min()) if values.numel() else 1.0
    mse = float(masked_mse(pred, clean, mask))
    return 10 * math.log10(peak**2 / max(mse, 1e-12))


def _denoise(model, image: torch.Tensor, present: torch.Tensor, roi: int, device) -> torch.Tensor:
    """The reconstruction head's output for a whole (1, C, *spatial) scan (sliding window, on the CPU)."""
    pres = present.to(device)

    def predictor(p, pres=pres):
        return forward_tasks(model, p, pres.expand(p.shape[0], -1), want=("recon",))["recon"]

    den = sliding_window_inference(image.to(device), (roi,) * 3, 2, predictor, overlap=0.25, mode="gaussian")
    return torch.as_tensor(den).cpu()


@torch.no_grad()
def denoise_scores(
    model, items: list[dict], noise: str, levels, roi: int, seed: int, device="cpu", full: bool = True
) -> dict:
    """Mean over ``items`` of PSNR and SSIM, noisy and denoised, at each level (``psnr-noisy-<i>``,
    ``psnr-denoised-<i>``, ``ssim-noisy-<i>``, ``ssim-denoised-<i>``, i = level index), scored against the
    scan itself, and ``val-loss`` (the masked MSE at the middle level). The noise is drawn from ``seed``: the
    same at every evaluation; Rician noise on the scan's magnitude floor (the item's ``floor``, as in
    training). ``full`` False: the middle level's PSNR and loss only (the cheap check between rounds).

    Items with a noise-free ``reference`` (``has-reference``) are also scored against it, on the modalities
    that have one: ``psnr-clean-noisy-<i>`` / ``psnr-clean-denoised-<i>``, level ``s`` being the scan as
    acquired (no added noise) and the model's output for it, and ``intrinsic-noise``, the RMS of scan -
    reference on the brain (z-scored units). Against the scan itself a perfect denoiser gains at most
    10 log10(1 + sigma^2 / intrinsic^2) dB; against the reference there is no such ceiling."""
    model.to(device).eval()
    ssim = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=7)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}

    def add(key: str, value: float) -> None:
        sums[key], counts[key] = sums.get(key, 0.0) + value, counts.get(key, 0) + 1

    middle = len(levels) // 2
    for item in items:
        x = torch.as_tensor(item["image"]).unsqueeze(0).float()
        present = torch.as_tensor(item["present"]).view(1, -1)
        mask = brain_mask(x, present)
        floor = torch.as_tensor(item["floor"]).view(1, -1) if "floor" in item else None
        lo, hi = x[mask].min(), x[mask].max()
        has = torch.as_tensor(item.get("has-reference", torch.zeros(x.shape[1], dtype=torch.bool))).view(1, -1)
        clean = torch.as_tensor(item["reference"]).unsqueeze(0).float() if bool(has.any()) else None
        cmask = brain_mask(x, present & has) if clean is not None else None
        if clean is not None and full:
            add(INTRINSIC_NOISE, float(masked_mse(x, clean, cmask)) ** 0.5)
            add("psnr-clean-noisy-s", psnr(x, clean, cmask))
            own = torch.where(mask, _denoise(model, x, present, roi, device), x)  # the scan as acquired, denoised
            add("psnr-clean-denoised-s", psnr(own, clean, cmask))
        for i, sigma in enumerate(levels):
            if not full and i != middle:
                continue
            gen = torch.Generator().manual_seed(seed * 7919 + i)
            noisy = corrupt(x, mask, noise, float(sigma), gen, floor)
            den = torch.where(mask, _denoise(model, noisy, present, roi, device), x)
            chans = present[0].nonzero().flatten()
            for name, img in (("noisy", noisy), ("denoised", den)):
                add(f"psnr-{name}-{i}", psnr(img, x, mask))
                if full:
                    scaled = ((img - lo) / (hi - lo)).clamp(0, 1)[:, chans]
                    ref = ((x - lo) / (hi - lo)).clamp(0, 1)[:, chans]
                    add(f"ssim-{name}-{i}", float(ssim(scaled.transpose(0, 1), ref.transpose(0, 1)).mean()))
                if clean is not None:
                    add(f"psnr-clean-{name}-{i}", psnr(img, clean, cmask))
            if i == middle:
                add("val-loss", float(masked_mse(den, x, mask)))
    return {k: v / counts[k] for k, v in sums.items()}


@torch.no_grad()
def presence_accuracy(model, items: list[dict], roi: int, seed: int, per_case: int = 4, device="cpu") -> dict:
    """The presence head per region on ``per_case`` patches of each validation scan (half centred on lesion,
    half on background, drawn from ``seed``): accuracy (``presence-<region>``) and, where both answers
    occur among the patches, the area under the ROC curve of its logit (``presence-auroc-<region>``;
    accuracy alone hides a head stuck at the base rate). Regions a scan's protocol does not annotate are
    not scored."""
    from monai.metrics import compute_roc_auc
    from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

    model.to(device).eval()
    pad = SpatialPadd(keys=["image", "label"], spatial_size=(roi,) * 3)
    crop = RandCropByPosNegLabeld(
        keys=["image", "label"], label_key="label", spatial_size=(roi,) * 3, pos=1, neg=1, num_samples=per_case
    )
    crop.set_random_state(seed=seed % (2**32))
    logits, targets, scored = [], [], []
    for item in items:
        mask = torch.as_tensor(item["regions"]).bool()
        if not bool(mask.any()):
            continue
        patches = crop(pad({"image": item["image"], "label": item["label"]}))
        x = torch.stack([torch.as_tensor(p["image"]) for p in patches]).to(device)
        y = torch.stack([torch.as_tensor(p["label"]) for p in patches])
        present = torch.as_tensor(item["present"]).view(1, -1).expand(len(patches), -1).to(device)
        logits.append(forward_tasks(model, x, present, want=("presence",))["presence"].float().cpu())
        targets.append(presence_targets(y))
        scored.append(mask.view(1, -1).expand(len(patches), -1))
    out = {}
    for i, r in enumerate(model.regions):
        keep = torch.cat(scored)[:, i] if scored else torch.zeros(0, dtype=torch.bool)
        z = torch.cat(logits)[keep, i] if scored else torch.zeros(0)
        t = torch.cat(targets)[keep, i] if scored else torch.zeros(0)
        out[f"presence-{r.lower()}"] = float(((z > 0).float() == t).float().mean()) if len(t) else float("nan")
        if len(t) and 0 < float(t.sum()) < len(t):
            out[f"presence-auroc-{r.lower()}"] = float(compute_roc_auc(z, t))
    return out

"""Local training and evaluation (Flower-free): masked DiceCE, FedProx term, sliding-window metrics.

Region outputs (ET, TC, WT by default; more after a class is added) are independent sigmoids. A site
whose protocol annotates only some regions (e.g. whole tumour only) contributes loss and metrics on
those regions alone.
"""

from __future__ import annotations

import math
import warnings

import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from uharmony.model.gating import scan_gate, uses_scan_gate
from uharmony.model.head import DomainGatedHead
from uharmony.model.lesionwise import lesionwise_dice
from uharmony.model.roles import DOMAIN, param_roles
from uharmony.precision import autocast, layout, to_layout
from uharmony.vocabulary import REGIONS


def masked_dice_ce(
    loss_fn: DiceCELoss, logits: torch.Tensor, target: torch.Tensor, regions: torch.Tensor
) -> torch.Tensor:
    """DiceCE over the annotated regions of each sample (samples grouped by their region mask)."""
    regions = regions.bool().reshape(logits.shape[0], -1)
    total, count = logits.new_zeros(()), 0
    for pattern in torch.unique(regions, dim=0):
        if not bool(pattern.any()):
            continue
        rows = (regions == pattern).all(1)
        chans = pattern.nonzero().flatten()
        n = int(rows.sum())
        total = total + loss_fn(logits[rows][:, chans], target[rows][:, chans]) * n
        count += n
    if count == 0:
        raise ValueError("batch has no annotated region")
    return total / count


def proximal_term(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx: 0.5 * ||w - w_global||^2 over the parameters named in ``reference``."""
    terms = [(p - reference[n]).pow(2).sum() for n, p in model.named_parameters() if n in reference]
    return 0.5 * torch.stack(terms).sum() if terms else torch.zeros(())


def scheduled_lr(lr: float, server_round: int, rounds: int, schedule: str = "cosine", floor: float = 0.05) -> float:
    """The learning rate of a round: constant, or cosine-decayed from ``lr`` to ``floor * lr`` at the last."""
    if schedule == "constant" or rounds <= 1:
        return lr
    progress = (server_round - 1) / (rounds - 1)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def residual_expert_names(model) -> set[str]:
    """Names of the parameters of a residual gated head's domain experts (by module type, ``uharmony.model.roles``):
    each is a domain's correction to the shared answer."""
    head = getattr(model, "head", None)
    if not (isinstance(head, DomainGatedHead) and head.residual):
        return set()
    roles = param_roles(model)
    return {n for n, _ in model.named_parameters() if roles.get(n) == DOMAIN}


def make_optimizer(
    named_params: list,
    kind: str,
    lr: float,
    weight_decay: float,
    state: dict | None = None,
    decay: dict[str, float] | None = None,
):
    """AdamW (decoupled weight decay; default), Adam (L2 in the gradient, as before) or nnU-Net's SGD, with the
    site's saved moments restored by parameter name where the shapes still match. ``decay``: another weight
    decay for the parameters it names (Adam/AdamW; a group of its own)."""
    params = [p for _, p in named_params]
    if decay and kind != "sgd":
        other = {n: v for n, v in decay.items() if v != weight_decay}
        groups = [{"params": [p for n, p in named_params if n not in other]}]
        for value in sorted(set(other.values())):
            groups.append({"params": [p for n, p in named_params if other.get(n) == value], "weight_decay": value})
        params = [g for g in groups if g["params"]]
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=3e-5)
    elif kind == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    for name, p in named_params:
        saved = (state or {}).get(name)
        if saved and all(v.shape == p.shape for k, v in saved.items() if k != "step"):
            # each moment in its parameter's layout (channels-last during a step: uharmony.precision.layout)
            opt.state[p] = {
                k: torch.empty_like(p).copy_(v) if v.shape == p.shape else v.clone() for k, v in saved.items()
            }
    return opt


def optimizer_state(opt, named_params: list) -> dict:
    """The optimizer's per-parameter state by parameter name (CPU tensors)."""
    return {
        name: {
            k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, v in opt.state[p].items()
            if torch.is_tensor(v)
        }
        for name, p in named_params
        if p in opt.state
    }


def train_steps(
    model,
    batches,
    domain,
    lr: float,
    proximal_mu: float = 0.0,
    reference=None,
    device: str = "cpu",
    weight_decay: float = 1e-2,
    optimizer: str = "adamw",
    state: dict | None = None,
    residual_weight_decay: float | None = None,
    autocast_dtype=None,
    channels_last: bool = False,
    per_case_domain: bool = False,
) -> dict:
    """Run the given batches; returns mean loss, step count and the optimizer's state (``"state"``, by
    parameter name), which ``state`` restores at the next call (the site keeps its moments across rounds).
    ``residual_weight_decay``: the decay of a residual gated head's experts (None: ``weight_decay``), which
    pulls each domain's correction towards the shared answer. ``autocast_dtype``: the forward pass in this
    precision (``torch.bfloat16``; the loss and the optimizer in fp32); None: fp32. ``channels_last``: the
    convolutions on channels-last tensors (``uharmony.precision.layout``; the model is back in the default layout
    on return). ``domain``: the expert trained (None: the shared answer); ``per_case_domain``: each case's own
    (the batch's ``"domain"`` entry: a pooled, centralized trainer)."""
    model.to(device).train()
    with layout(model, channels_last, getattr(model, "spatial_dims", 3)):  # back to the default on return
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        decay = None
        if residual_weight_decay is not None:
            decay = dict.fromkeys(residual_expert_names(model), residual_weight_decay)
        opt = make_optimizer(named, optimizer, lr, weight_decay, state, decay)
        if proximal_mu > 0 and reference:  # FedProx's anchor on the step's device (the site holds it on the CPU)
            reference = {k: v.to(device) for k, v in reference.items()}
        loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
        losses = []
        for batch in batches:
            x, y = to_layout(batch["image"].to(device), channels_last), batch["label"].to(device)
            present, regions = batch["present"].to(device), batch["regions"].to(device)
            opt.zero_grad(set_to_none=True)
            dom = batch["domain"] if per_case_domain else domain
            with autocast(device, autocast_dtype):
                logits = model(x.as_tensor() if hasattr(x, "as_tensor") else x, domain=dom, present=present)
            loss = masked_dice_ce(loss_fn, logits.float(), y.as_tensor() if hasattr(y, "as_tensor") else y, regions)
            if proximal_mu > 0 and reference:
                loss = loss + proximal_mu * proximal_term(model, reference)
            losses.append(step(loss, [opt]))
        return {"loss": sum(losses) / max(len(losses), 1), "steps": len(losses), "state": optimizer_state(opt, named)}


def step(loss: torch.Tensor, optimizers, what: str = "training") -> float:
    """Backpropagate ``loss`` (refused when not finite) and step ``optimizers``; returns the loss value."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {what} loss {loss.item()}")
    loss.backward()
    for opt in optimizers:
        opt.step()
    return loss.item()


@torch.no_grad()
def predict(
    model,
    image: torch.Tensor,
    present: torch.Tensor,
    domain,
    roi: int,
    overlap: float = 0.25,
    device: str = "cpu",
    gate_weights: torch.Tensor | None = None,
    autocast_dtype=None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Sliding-window sigmoid probabilities (1, C, *spatial) for one preprocessed case (C, *spatial).

    ``domain`` None with a ``scan``-gated head: the gate decides once for the whole scan (``gate_weights``
    (1, D) when already known). ``autocast_dtype``: the windows' forward passes in that precision;
    ``channels_last``: in channels-last memory (``uharmony.precision.layout``)."""
    weights = gate_weights
    if weights is None and domain is None and uses_scan_gate(model):
        weights = scan_gate(model, image, present, roi, device)
    model.to(device).eval()
    x = torch.as_tensor(image).unsqueeze(0).to(device)
    pres = torch.as_tensor(present).view(1, -1).to(device)

    def predictor(p):
        kw = {} if weights is None else {"gate_weights": weights.to(device).expand(p.shape[0], -1)}
        with autocast(device, autocast_dtype):
            out = model(to_layout(p, channels_last), domain=domain, present=pres.expand(p.shape[0], -1), **kw)
        return out.float().contiguous()

    with layout(model, channels_last, getattr(model, "spatial_dims", 3)):
        logits = sliding_window_inference(
            x, (roi,) * 3, sw_batch_size=2, overlap=overlap, mode="gaussian", predictor=predictor
        )
    return torch.sigmoid(torch.as_tensor(logits))


def evaluate_cases(
    model,
    items: list[dict],
    domain,
    roi: int,
    device: str = "cpu",
    regions=None,
    gate_weights=None,
    per_case: list | None = None,
    autocast_dtype=None,
    channels_last: bool = False,
) -> dict:
    """Per-region mean Dice and HD95 (in mm, from the item's ``spacing``) over ``items``; NaN where no case
    annotates the region (HD95 also skips cases where it is undefined: an empty prediction or truth).

    ``regions``: names of the output channels (default: the model's, else ET/TC/WT). ``gate_weights``: one
    (1, D) scan-gate decision per item (dataset-free mode), when already computed. ``per_case``: a list that
    gets one record per case (its id and Dice per region; stays where it is computed).
    """
    regions = list(regions or getattr(model, "regions", REGIONS))
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    dices, hds = [], []
    for i, item in enumerate(items):
        weights = None if gate_weights is None else gate_weights[i]
        prob = predict(
            model,
            item["image"],
            item["present"],
            domain,
            roi,
            device=device,
            gate_weights=weights,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
        )
        pred = (prob > 0.5).float().cpu()
        target = torch.as_tensor(item["label"]).unsqueeze(0).float()
        spacing = [float(s) for s in item["spacing"]] if "spacing" in item else None
        mask = torch.as_tensor(item["regions"]).bool()
        dices.append(torch.where(mask, dice(pred, target)[0], torch.nan))
        with warnings.catch_warnings():  # MONAI notes an empty region (HD95 is then skipped) and its own deprecations
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            h = hd(pred, target, spacing=spacing)[0]
        hds.append(torch.where(mask & torch.isfinite(h), h, torch.nan))
        if per_case is not None:
            per_case.append(case_record(str(item.get("case_id", i)), regions, dices[-1], pred[0], target[0], mask))
    out = {}
    if not items:
        return out
    for name, per_case in (("dice", dices), ("hd95", hds)):
        values, counts = do_metric_reduction(torch.stack(per_case).float(), MetricReduction.MEAN_BATCH)
        for i, region in enumerate(regions):
            out[f"{name}-{region.lower()}"] = float(values[i]) if counts[i] > 0 else float("nan")
    return out


def case_record(case: str, regions, dices: torch.Tensor, pred: torch.Tensor, truth: torch.Tensor, mask) -> dict:
    """One case's scores per annotated region: Dice (BraTS rule: 1 when truth and prediction are both empty),
    the truth's voxel count (0: an empty region, so the Dice can also be read with such cases left out) and
    the lesion-wise Dice (``uharmony.model.lesionwise``)."""
    rec = {"case": case}
    for i, r in enumerate(regions):
        key = r.lower()
        annotated = bool(mask[i])
        rec[f"dice-{key}"] = round(float(dices[i]), 4) if annotated and dices[i] == dices[i] else None
        rec[f"truth-{key}"] = int(truth[i].sum()) if annotated else None
        rec[f"lesion-{key}"] = (
            round(lesionwise_dice(pred[i].numpy() > 0, truth[i].numpy() > 0), 4) if annotated else None
        )
    return rec

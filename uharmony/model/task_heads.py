"""UMS-Rep task heads on the segmentation trunk (stems + MONAI backbone + U-Harmony layers).

- :class:`ReconstructionHead` (phase P, label-free): the trunk's full-resolution features -> one channel per
  modality, read as the residual ``clean - noisy`` and added to the noisy input (residual learning as in
  DnCNN; ours: the paper's CDAE reconstructs the image directly).
- :class:`PresenceHead` (phase F, image-level): the encoder's feature maps at every scale (the run config's
  ``presence-pool = "multiscale"``, the default; ``"bottleneck"``: the deepest map only, as before 2026-12-07)
  -> global average and max pooling of each, concatenated -> layer normalization (ours) -> FC -> leaky ReLU ->
  dropout -> FC, one logit per output region: "does this patch contain the region?". Every scale is ours: a
  linear probe of whole-tumour presence reads 0.91 AUROC from every scale against 0.71 from the bottleneck
  (0.87 against 0.65 with whole cases held out; docs/umsrep-probe-pooling-confirm.md, fresh seeds 10-19).
  The output layer starts at zero and its bias at the patches' base rate (ours, against the collapse the
  2026-12-06 review measured: 17 of 20 units dead within 20 steps). The paper's classification head: GAP, FC,
  dropout, output layer; sigmoid per region since regions are not exclusive.
  Max pooling is ours: the bottleneck ends with instance normalization, which fixes each channel's spatial
  mean, so average pooling alone carries almost nothing (our first evidence run: accuracy at the base rate).

Which module is the bottleneck, and which are the encoder's scales, is decided by the backbone's type (MONAI's
DynUNet: ``input_block``, ``downsamples``, ``bottleneck``; SwinUNETR: ``encoder1``-``encoder4``, ``encoder10``),
never by searching names. Grad-CAM (``uharmony.umsrep.derive``) hooks the bottleneck's path only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets import DynUNet, SwinUNETR
from torch import nn

from uharmony.vocabulary import PRESENCE_POOLS

TASKS = ("recon", "presence", "tumour-type")  # extra heads a UHarmonyNet can carry beside segmentation
PRESENCE_HIDDEN = 32  # ours: the paper's FC width is not recoverable
PRESENCE_DROPOUT = 0.5  # the paper's echo network B


class ReconstructionHead(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, modalities: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, modalities, kernel_size=1)
        nn.init.zeros_(self.conv.weight)  # starts as the identity on the noisy input
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        return noisy + self.conv(features)

    @torch.no_grad()
    def add_output_channels(self, n: int) -> None:
        """One more modality: its residual starts at zero (the noisy input itself)."""
        old = self.conv
        new = type(old)(old.in_channels, old.out_channels + n, kernel_size=1).to(old.weight.device)
        new.weight.zero_()
        new.bias.zero_()
        new.weight[: old.out_channels] = old.weight
        new.bias[: old.out_channels] = old.bias
        self.conv = new


class PooledHead(nn.Module):
    """An image-level head on the encoder's pooled feature maps (the presence and the type head's readout)."""

    def __init__(self, in_channels: int | Sequence[int], regions: int, multiscale: bool = False) -> None:
        """``in_channels``: the bottleneck's channels, or (``multiscale``: ``presence-pool = "multiscale"``)
        those of every encoder scale it reads, finest first (:func:`encoder_levels`); ``regions``: its outputs."""
        super().__init__()
        self.multiscale = multiscale
        channels = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        self.tap = nn.Identity()  # the bottleneck as this head sees it: where Grad-CAM hooks (uharmony.umsrep.derive)
        # the pooled vector standardized (no learnt affine: no state entry), leaky units that cannot all die
        # at once, and an output layer at zero: the first steps move the output bias (set to the patches' base
        # rate by the first fine-tuning step, uharmony.umsrep.training) before they reach the hidden units
        self.pool_norm = nn.LayerNorm(2 * sum(channels), elementwise_affine=False)
        self.net = nn.Sequential(
            nn.Linear(2 * sum(channels), PRESENCE_HIDDEN),
            nn.LeakyReLU(0.1),
            nn.Dropout(PRESENCE_DROPOUT),
            nn.Linear(PRESENCE_HIDDEN, regions),
        )
        nn.init.zeros_(self.net[3].weight)
        nn.init.zeros_(self.net[3].bias)

    def forward(self, maps: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """``maps``: the bottleneck, or every scale's feature map with the bottleneck last."""
        maps = [maps] if isinstance(maps, torch.Tensor) else list(maps)
        maps[-1] = self.tap(maps[-1])
        flat = [m.flatten(2) for m in maps]
        return self.net(self.pool_norm(torch.cat([f.mean(2) for f in flat] + [f.amax(2) for f in flat], 1)))


class PresenceHead(PooledHead):
    """One logit per output region: "does this patch contain the region?" (module docstring)."""

    @torch.no_grad()
    def add_output_channels(self, n: int) -> None:
        """A new region: its logit starts at zero weight and bias -4.6 (probability 0.01: absent)."""
        old = self.net[3]
        new = nn.Linear(old.in_features, old.out_features + n).to(old.weight.device)
        new.weight.zero_()
        new.bias.fill_(-4.6)
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        self.net[3] = new


class TypeHead(PooledHead):
    """UMS-Rep's scan-level second task (docs/method.md, "UMS-Rep's second task"): the presence head's readout
    (every encoder scale pooled by mean and max, normalized, FC, leaky ReLU, dropout, FC) with one logit per
    tumour type (``types``: the run's classes, in order), trained with softmax cross-entropy on patches that
    hold tumour; a scan's answer averages its tumour patches' probabilities. Its output layer starts at zero:
    every type equally likely."""

    def __init__(self, in_channels: int | Sequence[int], types: Sequence[str]) -> None:
        if len(types) < 2 or len(set(types)) != len(types):
            raise ValueError(f"build_model: a type head needs at least two distinct types, got {list(types)}")
        super().__init__(in_channels, len(types), multiscale=not isinstance(in_channels, int))
        self.types = tuple(types)  # fixed for the run: every site scores the same classes in the same order


def bottleneck_of(backbone: nn.Module) -> tuple[nn.Module, int]:
    """(the module whose output is the backbone's deepest feature map, its channels), by backbone type: the last
    of :func:`encoder_levels`."""
    return encoder_levels(backbone)[-1], encoder_channels(backbone)[-1]


def encoder_channels(backbone: nn.Module) -> list[int]:
    """The channels of :func:`encoder_levels`' outputs, by backbone type."""
    if isinstance(backbone, DynUNet):
        return [int(f) for f in backbone.filters]
    if isinstance(backbone, SwinUNETR):
        size = int(backbone.encoder1.layer.conv1.conv.out_channels)
        return [size, size, 2 * size, 4 * size, 16 * size]
    raise ValueError(f"UMS-Rep heads: no known encoder levels for a {type(backbone).__name__} backbone")


def encoder_levels(backbone: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the encoder's feature maps at every scale, finest first, the bottleneck
    last, by backbone type."""
    if isinstance(backbone, DynUNet):
        return [backbone.input_block, *backbone.downsamples, backbone.bottleneck]
    if isinstance(backbone, SwinUNETR):
        return [backbone.encoder1, backbone.encoder2, backbone.encoder3, backbone.encoder4, backbone.encoder10]
    raise ValueError(f"UMS-Rep heads: no known encoder levels for a {type(backbone).__name__} backbone")


def top_skip_blocks(backbone: nn.Module, levels: int) -> list[nn.Module]:
    """The decoder blocks that take the ``levels`` highest-resolution skip connections (called as
    ``block(upsampled, skip)``), top first, by backbone type."""
    if isinstance(backbone, DynUNet):
        blocks = list(backbone.upsamples)[::-1]  # MONAI builds the top skip layer with the last upsample
    elif isinstance(backbone, SwinUNETR):
        blocks = [backbone.decoder1, backbone.decoder2, backbone.decoder3, backbone.decoder4, backbone.decoder5]
    else:
        raise ValueError(f"UMS-Rep: no known skip connections for a {type(backbone).__name__} backbone")
    return blocks[:levels]


@contextmanager
def top_skips_dropped(backbone: nn.Module, levels: int, p: float, generator: torch.Generator | None = None):
    """Within the block, each of the ``levels`` top skip connections is zeroed for each sample with
    probability ``p`` (drawn from ``generator`` at every forward pass): what the decoder restores must then come
    through the deeper, coarser path (phase P's ``denoise+skipdrop`` pretext). With the residual
    :class:`ReconstructionHead`, a sample that lost both top skips can hardly predict its full-resolution noise
    from coarse features: for it the cheapest answer is little correction, not a restoration from depth."""

    def drop(_module, args):
        upsampled, skip = args[0], args[1]
        keep = (torch.rand(skip.shape[0], generator=generator) >= p).to(skip.dtype).to(skip.device)
        return (upsampled, skip * keep.view(-1, *([1] * (skip.dim() - 1))), *args[2:])

    handles = [b.register_forward_pre_hook(drop) for b in top_skip_blocks(backbone, levels)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def make_task_heads(
    tasks,
    spatial_dims: int,
    features: int,
    modalities: int,
    regions: int,
    backbone,
    presence_pool: str = "bottleneck",
    types: Sequence[str] = (),
) -> nn.ModuleDict:
    """The extra heads named in ``tasks`` (a subset of :data:`TASKS`); ``presence_pool``: what the presence
    head reads (:data:`PRESENCE_POOLS`); ``types``: the type head's classes (it reads every encoder scale)."""
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"build_model: unknown tasks {unknown} (known: {list(TASKS)})")
    if presence_pool not in PRESENCE_POOLS:
        raise ValueError(f"build_model: presence_pool must be one of {list(PRESENCE_POOLS)}, got {presence_pool!r}")
    heads = nn.ModuleDict()
    if "recon" in tasks:
        heads["recon"] = ReconstructionHead(spatial_dims, features, modalities)
    if "presence" in tasks:
        multi = presence_pool == "multiscale"
        channels = encoder_channels(backbone) if multi else bottleneck_of(backbone)[1]
        heads["presence"] = PresenceHead(channels, regions, multiscale=multi)
    if "tumour-type" in tasks:
        heads["tumour-type"] = TypeHead(encoder_channels(backbone), types)
    elif types:
        raise ValueError("build_model: types are the type head's classes; give them with tasks including 'tumour-type'")
    return heads


def forward_tasks(net, x: torch.Tensor, present=None, domain=None, gate_weights=None, want=("seg",)) -> dict:
    """One trunk pass, every wanted output: ``seg`` (logits), ``recon`` (denoised input), ``presence``
    (region logits per sample), ``tumour-type`` (one logit per tumour type and sample)."""
    out, caught = {}, {}
    handles = []
    pooled = [t for t in ("presence", "tumour-type") if t in want]
    if pooled:
        multi = any(net.tasks[t].multiscale for t in pooled)
        levels = encoder_levels(net.backbone) if multi else [bottleneck_of(net.backbone)[0]]
        handles = [
            m.register_forward_hook(lambda _m, _i, o, k=k: caught.setdefault(k, o)) for k, m in enumerate(levels)
        ]
    try:
        features = net.features(x, present)
    finally:
        for h in handles:
            h.remove()
    if "seg" in want:
        out["seg"] = net.head(features, domain, gate_weights) if net.gated else net.head(features)
    if "recon" in want:
        out["recon"] = net.tasks["recon"](features, x)
    maps = [caught[k] for k in range(len(caught))]
    for t in pooled:  # a bottleneck-only presence head beside the type head reads the deepest map of them
        out[t] = net.tasks[t](maps if net.tasks[t].multiscale else maps[-1])
    return out

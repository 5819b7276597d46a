"""DomainGatedHead: a shared trunk, one light expert + prototype per domain, and a prototype-distance gate.

With a domain id the head uses that domain's expert (oracle mode); without one it mixes the experts by a
gate over the domains' prototypes (dataset-free inference). Two expert modes:

- ``residual`` (default, ours): a shared 1x1 conv gives every domain's common answer, and each expert adds
  a residual that starts at zero. Where the sites' labels agree the residuals stay small and nothing is
  lost against a shared head; where a site's convention differs, its residual learns the difference.
- ``separate`` (the earlier reconstruction): each expert is the whole output layer.

Two gates:

- ``scan`` (default, ours): one decision per scan. A scan's descriptor is the mean of its pooled feature maps
  over its fullest windows, followed (``fingerprint`` > 0) by its acquisition fingerprint
  (``uharmony.model.fingerprint``); a domain's prototype is the mean and variance of its sites' scan descriptors,
  computed with the model each site received (``uharmony.model.gating.scan_descriptor``), label-free. The gate is a
  softmax over the negative Mahalanobis distance with the domains' pooled per-dimension variance (no
  temperature to tune); below ``confidence`` the residual experts are left out (the shared answer). A scan
  beyond every domain's *reach* (``unseen="shared"``) gets the shared answer too: a softmax has no "none of
  these" answer and hands the nearest domain the weight however far the scan is. A domain's reach is the
  largest leave-one-out distance of its own prototype scans (under its own variance), so a new scan of the
  domain lies beyond it with probability about 1/(n + 1) for n scans.
- ``window``: a softmax over negative squared distances of each window's pooled, L2-normalized features
  to running means updated during training (temperature ``temperature``).

The gate has no trainable parameters; its training is our reconstruction (see docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

# A new output starts at the prior probability 0.01 (as RetinaNet's classification prior): absent at the 0.5
# threshold, yet within reach of Adam, which moves a parameter by about lr per step (a -10 bias was not
# learnt in 160 steps at lr 2e-3: measured with uharmony-join).
NEW_CLASS_BIAS = -math.log(99.0)
EXPERT_MODES, GATES, UNSEEN = ("residual", "separate"), ("scan", "window"), ("shared", "nearest")


def _scale(spread: torch.Tensor) -> torch.Tensor:
    """The scan gate's per-dimension variance, kept away from 0 (a constant dimension: 1e-3 of the mean)."""
    return spread + 1e-3 * spread.mean().clamp_min(1e-12) + 1e-12


def distance2(x: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Squared diagonal Mahalanobis distance of descriptors ``x`` (..., C) to ``mean`` under ``spread``."""
    return ((x - mean).pow(2) / _scale(spread)).sum(-1)


class DomainExpert(nn.Module):
    """One domain's part of the head: a 1x1 conv to the outputs, and the domain's prototype (mean and
    per-dimension variance of its descriptors, how many went into them, and their reach: the largest
    leave-one-out distance among them, 0 where unknown)."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, zero: bool = False, descriptor: int = 0
    ) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)
        if zero:
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
        descriptor = descriptor or in_channels  # the scan descriptor's length (features, then a fingerprint)
        self.register_buffer("prototype", torch.zeros(descriptor))
        self.register_buffer("spread", torch.ones(descriptor))
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("reach", torch.zeros(()))  # checkpoints from before it load with 0 (unknown)

    @property
    def has_prototype(self) -> bool:
        return bool(self.count > 0)

    @torch.no_grad()
    def update_prototype(self, pooled: torch.Tensor, momentum: float) -> None:
        """Running mean (cumulative for the first 1/momentum samples) of pooled features (``window`` gate)."""
        for row in pooled:
            self.count += 1
            rate = max(momentum, 1.0 / float(self.count))
            self.prototype.lerp_(row.to(self.prototype.dtype), rate)

    @torch.no_grad()
    def set_prototype(self, descriptors: torch.Tensor) -> None:
        """Mean, variance and reach of a site's scan descriptors (``scan`` gate). The reach needs 3 scans
        (each left out in turn against the mean and variance of at least 2 others)."""
        d = descriptors.to(self.prototype.dtype).reshape(-1, self.prototype.numel())
        self.prototype.copy_(d.mean(0))
        self.spread.copy_(d.var(0, unbiased=False) if len(d) > 1 else torch.zeros_like(self.spread))
        self.count.fill_(float(len(d)))
        reach = 0.0
        if len(d) >= 3:
            rest = [torch.cat([d[:i], d[i + 1 :]]) for i in range(len(d))]
            reach = max(float(distance2(d[i], r.mean(0), r.var(0, unbiased=False))) for i, r in enumerate(rest))
        self.reach.fill_(reach)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def head_trunk(spatial_dims: int, channels: int) -> nn.Module:
    """The layer every head starts with: a 1x1 conv and LeakyReLU (the same for gated and plain heads, so a
    comparison between them is not one of capacity)."""
    return nn.Sequential(Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=1), nn.LeakyReLU(0.01))


class PlainHead(nn.Module):
    """The baselines' head: the shared trunk, then one 1x1 conv to the outputs."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.trunk = head_trunk(spatial_dims, in_channels)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)

    def add_output_channels(self, n: int, bias: float = NEW_CLASS_BIAS) -> None:
        self.conv = widen_conv(self.conv, n, bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(self.trunk(features))


class DomainGatedHead(nn.Module):
    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_domains: int,
        temperature: float = 0.05,
        prototype_momentum: float = 0.05,
        knows: Sequence[Sequence[bool]] | None = None,
        experts: str = "residual",
        gate: str = "scan",
        confidence: float = 0.5,
        fingerprint: int = 0,
        unseen: str = "nearest",
    ) -> None:
        super().__init__()
        if experts not in EXPERT_MODES or gate not in GATES or unseen not in UNSEEN:
            raise ValueError(
                f"DomainGatedHead: experts must be one of {EXPERT_MODES}, gate one of {GATES} and unseen one of "
                f"{UNSEEN}, got {experts!r} / {gate!r} / {unseen!r}"
            )
        if not 0.0 <= confidence < 1.0:
            raise ValueError(f"DomainGatedHead: confidence must be in [0, 1), got {confidence!r}")
        self.residual, self.gate_kind, self.confidence = experts == "residual", gate, confidence
        self.unseen = unseen  # a scan beyond every domain's reach: the shared answer | the nearest domain's
        if spatial_dims not in (2, 3):
            raise ValueError(f"DomainGatedHead: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_domains", num_domains)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DomainGatedHead: {name} must be a positive int, got {value!r}")
        if temperature <= 0:
            raise ValueError(f"DomainGatedHead: temperature must be > 0, got {temperature!r}")
        if not 0.0 < prototype_momentum <= 1.0:
            raise ValueError(f"DomainGatedHead: prototype_momentum must be in (0, 1], got {prototype_momentum!r}")
        if not isinstance(fingerprint, int) or fingerprint < 0 or (fingerprint and gate != "scan"):
            raise ValueError(
                f"DomainGatedHead: fingerprint must be an int >= 0, with the scan gate only; got {fingerprint!r}"
            )
        self.fingerprint = fingerprint  # scan gate: acquisition-fingerprint entries after the pooled features
        # training only (set by the site from the run config, not part of the model): the share of samples whose
        # loss is taken on the shared answer alone, so that it learns every site's task (a misrouted scan gets it)
        self.expert_dropout = 0.0
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.temperature = temperature
        self.prototype_momentum = prototype_momentum
        self.trunk = head_trunk(spatial_dims, in_channels)
        if self.residual:  # every domain's common answer; the experts add to it
            self.shared = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)
        self.experts = nn.ModuleList(self._new_expert() for _ in range(num_domains))
        # knows[d, c]: expert d was trained on output c (its sites annotate it). Structure, not state: it
        # comes from the model spec, so it is not in the state dict and never aggregated.
        knows = (
            torch.ones(num_domains, out_channels, dtype=torch.bool) if knows is None else torch.as_tensor(knows).bool()
        )
        if tuple(knows.shape) != (num_domains, out_channels):
            raise ValueError(
                f"DomainGatedHead: knows must be ({num_domains}, {out_channels}), got {tuple(knows.shape)}"
            )
        self.register_buffer("knows", knows, persistent=False)

    def _new_expert(self) -> DomainExpert:
        return DomainExpert(
            self.spatial_dims,
            self.in_channels,
            self.out_channels,
            zero=self.residual,
            descriptor=self.in_channels + self.fingerprint,
        )

    @property
    def num_domains(self) -> int:
        return len(self.experts)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooled features (B, C); L2-normalized for the ``window`` gate."""
        pooled = features.flatten(2).mean(-1)
        return pooled if self.gate_kind == "scan" else F.normalize(pooled, dim=1)

    def gate_probs(self, features_or_descriptors: torch.Tensor) -> torch.Tensor:
        """Softmax over the domains (B, D) from feature maps (B, C, ...) or scan descriptors (B, C [+ the
        fingerprint]). Feature maps alone (a window without its scan: calibration, a training-mode call) are
        compared with the feature part of the prototypes. Domains without a prototype get 0; with none at
        all, the weights are uniform."""
        x = features_or_descriptors
        pooled = self.pooled(x) if x.dim() > 2 else x
        if pooled.shape[1] not in (self.in_channels, self.in_channels + self.fingerprint):
            raise ValueError(
                f"DomainGatedHead: descriptors of {self.in_channels} or {self.in_channels + self.fingerprint} "
                f"entries expected, got {tuple(pooled.shape)}"
            )
        ready = torch.tensor([e.has_prototype for e in self.experts], device=x.device)
        if not bool(ready.any()):
            return torch.full((x.shape[0], self.num_domains), 1.0 / self.num_domains, device=x.device)
        width = pooled.shape[1]
        protos = torch.stack([e.prototype[:width] for e in self.experts]).to(pooled.dtype)
        if self.gate_kind == "window":
            logits = -torch.cdist(pooled, protos).pow(2) / self.temperature
        else:  # Mahalanobis (diagonal) with the domains' pooled within-domain variance
            spread = torch.stack([e.spread[:width] for e in self.experts]).to(pooled.dtype)[ready].mean(0)
            logits = -0.5 * distance2(pooled.unsqueeze(1), protos.unsqueeze(0), spread)
        return torch.softmax(logits.masked_fill(~ready, float("-inf")), dim=1)

    def gate(self, features_or_descriptors: torch.Tensor) -> torch.Tensor:
        """The weights the experts are mixed with (B, D): :meth:`gate_probs`, where residual experts with the
        ``scan`` gate are left out (a row of zeros: the shared answer) when the best weight is below
        ``confidence`` or (``unseen="shared"``) the scan is :meth:`beyond_reach`."""
        weights = self.gate_probs(features_or_descriptors)
        if self.residual and self.gate_kind == "scan":
            sure = weights.max(1, keepdim=True).values >= self.confidence
            if self.unseen == "shared":
                sure = sure & ~self.beyond_reach(features_or_descriptors).unsqueeze(1)
            weights = torch.where(sure, weights, torch.zeros_like(weights))
        return weights

    def beyond_reach(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the scan (whole descriptor) is farther from every domain's prototype, under that domain's
        own variance, than the domain's reach. A domain whose reach is unknown (fewer than 3 scans, a model
        saved before the reach) claims the scans the gate hands it (its nearest) and leaves the test of the
        others to the domains whose reach is known: one domain cannot switch the test off for all. False
        where no reach is known, for the window gate, and for feature maps / the feature part alone."""
        x = descriptors
        batch = x.shape[0]
        none = torch.zeros(batch, dtype=torch.bool, device=x.device)
        if self.gate_kind != "scan" or x.dim() != 2 or x.shape[1] != self.in_channels + self.fingerprint:
            return none
        known = [e for e in self.experts if e.has_prototype and float(e.reach) > 0]
        if not known:
            return none
        beyond = torch.ones(batch, dtype=torch.bool, device=x.device)
        for e in known:
            beyond &= distance2(x, e.prototype.to(x.dtype), e.spread.to(x.dtype)) > float(e.reach)
        unknown = [d for d, e in enumerate(self.experts) if e.has_prototype and float(e.reach) <= 0]
        if unknown:
            nearest = self.gate_probs(x).argmax(1)
            beyond &= ~torch.isin(nearest, torch.tensor(unknown, device=x.device))
        return beyond

    def forward(
        self,
        features: torch.Tensor,
        domain: int | Sequence[int] | torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits: with ``domain`` that domain's expert; else the gate's mix (``weights`` (B, D): a gate
        decision made for the whole scan, see ``uharmony.model.inference``)."""
        if features.dim() != self.spatial_dims + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"DomainGatedHead expects (B, {self.in_channels}, *{self.spatial_dims}D), got {tuple(features.shape)}"
            )
        hidden = self.trunk(features)
        base = self.shared(hidden) if self.residual else 0.0
        if domain is None:
            weights = self.gate(features) if weights is None else weights.to(features.device)  # (B, D)
            outs = torch.stack([e(hidden) for e in self.experts], dim=1)  # (B, D, C, ...)
            if not self.residual and not bool(self.knows.all()):  # a residual expert's unknown outputs stay 0
                weights = self.channel_weights(weights)  # (B, D, C)
            weights = weights.view(weights.shape + (1,) * (outs.dim() - weights.dim())).to(outs.dtype)
            return base + (weights * outs).sum(1)
        domains = self._domain_list(domain, features.shape[0])
        if self.training and self.gate_kind == "window":
            pooled = self.pooled(features).detach()
            for d in set(domains):
                rows = [i for i, di in enumerate(domains) if di == d]
                self.experts[d].update_prototype(pooled[rows], self.prototype_momentum)
        if len(set(domains)) == 1:
            out = self.experts[domains[0]](hidden)
        else:
            out = torch.cat([self.experts[d](hidden[i : i + 1]) for i, d in enumerate(domains)], dim=0)
        if self.training and self.residual and self.expert_dropout > 0:  # these samples: the shared answer alone
            keep = torch.rand(out.shape[0], device=out.device) >= self.expert_dropout
            out = out * keep.view((-1,) + (1,) * (out.dim() - 1)).to(out.dtype)
        return base + out

    def channel_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Per output channel, the gate renormalized over the experts that know that channel (B, D, C).

        A class added by a joining site is known only to that site's expert; mixing in the others'
        "absent" logits would drown it. Where no expert with weight > 0 knows a channel, the plain gate
        is used (the scan resembles none of the domains that annotate it).
        """
        knows = self.knows.to(weights.dtype)  # (D, C)
        per = weights.unsqueeze(-1) * knows.unsqueeze(0)
        total = per.sum(1, keepdim=True)
        return torch.where(
            total > 0, per / total.clamp_min(torch.finfo(weights.dtype).tiny), weights.unsqueeze(-1).expand_as(per)
        )

    def _domain_list(self, domain, batch: int) -> list[int]:
        if isinstance(domain, torch.Tensor):
            domain = domain.flatten().tolist()
        domains = [int(domain)] * batch if isinstance(domain, int) else [int(d) for d in domain]
        if len(domains) != batch:
            raise ValueError(f"DomainGatedHead: got {len(domains)} domain ids for a batch of {batch}")
        bad = [d for d in domains if not 0 <= d < self.num_domains]
        if bad:
            raise ValueError(f"DomainGatedHead: domain ids {bad} outside [0, {self.num_domains})")
        return domains

    @torch.no_grad()
    def add_domain(self) -> int:
        """Append a new expert (residual: zero; separate: the mean of the existing ones); returns its id."""
        new = self._new_expert().to(self.experts[0].conv.weight.device)
        if not self.residual:
            new.conv.weight.copy_(torch.stack([e.conv.weight for e in self.experts]).mean(0))
            new.conv.bias.copy_(torch.stack([e.conv.bias for e in self.experts]).mean(0))
        self.experts.append(new)
        self.knows = torch.cat(
            [self.knows, torch.ones(1, self.out_channels, dtype=torch.bool, device=self.knows.device)]
        )
        return self.num_domains - 1

    @torch.no_grad()
    def resize_fingerprint(self, size: int) -> None:
        """A modality was added: the fingerprint has ``size`` entries now (the new modality's slots last).
        A prototype is padded with mean 0 and variance 0 there: exactly what its domain's scans, which lack
        the modality (zeros in its slots), would give if recomputed."""
        if not self.fingerprint or size == self.fingerprint:
            return
        if size < self.fingerprint:
            raise ValueError(f"DomainGatedHead: the fingerprint cannot shrink ({self.fingerprint} -> {size})")
        extra = size - self.fingerprint
        self.fingerprint = int(size)
        for e in self.experts:
            e.prototype = torch.cat([e.prototype, e.prototype.new_zeros(extra)])
            e.spread = torch.cat([e.spread, e.spread.new_zeros(extra)])

    @torch.no_grad()
    def add_output_channels(self, n: int, bias: float = NEW_CLASS_BIAS) -> None:
        """Add ``n`` output channels to every expert (and the shared conv); old channels keep their weights
        exactly. A residual expert's new channels start at zero: the shared conv carries the class prior."""
        if self.residual:
            self.shared = widen_conv(self.shared, n, bias)
        for expert in self.experts:
            expert.conv = widen_conv(expert.conv, n, 0.0 if self.residual else bias)
        self.knows = torch.cat(
            [self.knows, torch.zeros(self.num_domains, n, dtype=torch.bool, device=self.knows.device)], 1
        )
        self.out_channels += n


@torch.no_grad()
def widen_conv(conv: nn.Module, n: int, bias: float = NEW_CLASS_BIAS) -> nn.Module:
    """A copy of a 1x1 conv with ``n`` more output channels: zero weights and bias ``bias`` (the class
    prior 0.01: "absent" at the 0.5 threshold), the old channels' weights copied exactly."""
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or conv.bias is None:
        raise ValueError(f"widen_conv: expected a Conv2d/Conv3d with bias, got {type(conv).__name__}")
    old_out = conv.out_channels
    new = type(conv)(conv.in_channels, old_out + n, kernel_size=conv.kernel_size).to(conv.weight.device)
    new.weight.zero_()
    new.weight[:old_out].copy_(conv.weight)
    new.bias.fill_(bias)
    new.bias[:old_out].copy_(conv.bias)
    return new

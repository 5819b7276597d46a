"""DomainGatedHead: shared trunk, one light expert + prototype per domain, prototype-distance gate.

With a domain id the head uses that domain's expert (oracle mode). Without one it mixes the experts
with a softmax over negative squared distances between the sample's pooled, L2-normalized features and
each domain's prototype (dataset-free inference). Prototypes are label-free running means of those
pooled features, updated when the head is trained with a known domain. The gate's training is our
reconstruction (see docs/method.md): the gate itself has no parameters, only the prototypes.
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


class DomainExpert(nn.Module):
    """One domain's part of the head: a 1x1 conv to the output channels and the domain prototype."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)
        self.register_buffer("prototype", torch.zeros(in_channels))
        self.register_buffer("count", torch.zeros(()))

    @property
    def has_prototype(self) -> bool:
        return bool(self.count > 0)

    @torch.no_grad()
    def update_prototype(self, pooled: torch.Tensor, momentum: float) -> None:
        """Running mean (cumulative for the first 1/momentum samples) of pooled features."""
        for row in pooled:
            self.count += 1
            rate = max(momentum, 1.0 / float(self.count))
            self.prototype.lerp_(row.to(self.prototype.dtype), rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


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
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"DomainGatedHead: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("num_domains", num_domains)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DomainGatedHead: {name} must be a positive int, got {value!r}")
        if temperature <= 0:
            raise ValueError(f"DomainGatedHead: temperature must be > 0, got {temperature!r}")
        if not 0.0 < prototype_momentum <= 1.0:
            raise ValueError(f"DomainGatedHead: prototype_momentum must be in (0, 1], got {prototype_momentum!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.temperature = temperature
        self.prototype_momentum = prototype_momentum
        conv = Conv[Conv.CONV, spatial_dims]
        self.trunk = nn.Sequential(conv(in_channels, in_channels, kernel_size=1), nn.LeakyReLU(0.01))
        self.experts = nn.ModuleList(DomainExpert(spatial_dims, in_channels, out_channels) for _ in range(num_domains))
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

    @property
    def num_domains(self) -> int:
        return len(self.experts)

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooled, L2-normalized features (B, C): what prototypes summarize."""
        return F.normalize(features.flatten(2).mean(-1), dim=1)

    def gate(self, features: torch.Tensor) -> torch.Tensor:
        """Gate weights (B, D) over domains; domains without a prototype get weight 0.

        If no domain has a prototype yet, the experts are weighted uniformly.
        """
        pooled = self.pooled(features)
        ready = torch.tensor([e.has_prototype for e in self.experts], device=features.device)
        if not bool(ready.any()):
            return torch.full((features.shape[0], self.num_domains), 1.0 / self.num_domains, device=features.device)
        protos = torch.stack([e.prototype for e in self.experts]).to(pooled.dtype)
        dist = torch.cdist(pooled, protos).pow(2)
        logits = (-dist / self.temperature).masked_fill(~ready, float("-inf"))
        return torch.softmax(logits, dim=1)

    def forward(self, features: torch.Tensor, domain: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        if features.dim() != self.spatial_dims + 2 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"DomainGatedHead expects (B, {self.in_channels}, *{self.spatial_dims}D), got {tuple(features.shape)}"
            )
        hidden = self.trunk(features)
        if domain is None:
            weights = self.gate(features)  # (B, D)
            outs = torch.stack([e(hidden) for e in self.experts], dim=1)  # (B, D, C, ...)
            if not bool(self.knows.all()):
                weights = self.channel_weights(weights)  # (B, D, C)
            weights = weights.view(weights.shape + (1,) * (outs.dim() - weights.dim())).to(outs.dtype)
            return (weights * outs).sum(1)
        domains = self._domain_list(domain, features.shape[0])
        if self.training:
            pooled = self.pooled(features).detach()
            for d in set(domains):
                rows = [i for i, di in enumerate(domains) if di == d]
                self.experts[d].update_prototype(pooled[rows], self.prototype_momentum)
        if len(set(domains)) == 1:
            return self.experts[domains[0]](hidden)
        return torch.cat([self.experts[d](hidden[i : i + 1]) for i, d in enumerate(domains)], dim=0)

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
        """Append a new expert initialized as the mean of the existing ones; returns its id."""
        new = DomainExpert(self.spatial_dims, self.in_channels, self.out_channels).to(
            self.experts[0].conv.weight.device
        )
        new.conv.weight.copy_(torch.stack([e.conv.weight for e in self.experts]).mean(0))
        new.conv.bias.copy_(torch.stack([e.conv.bias for e in self.experts]).mean(0))
        self.experts.append(new)
        self.knows = torch.cat(
            [self.knows, torch.ones(1, self.out_channels, dtype=torch.bool, device=self.knows.device)]
        )
        return self.num_domains - 1

    @torch.no_grad()
    def add_output_channels(self, n: int, bias: float = NEW_CLASS_BIAS) -> None:
        """Add ``n`` output channels to every expert; old channels keep their weights exactly."""
        for expert in self.experts:
            expert.conv = widen_conv(expert.conv, n, bias)
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

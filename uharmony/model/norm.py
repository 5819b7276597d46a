"""UHarmonyNorm: two-stage feature harmonization (paper stage 1 + our reconstruction of stage 2).

Stage 1 (stated by the paper): per-sample, per-channel standardization over all spatial positions,
    x_hat = (x - mu_inst) / sqrt(var_inst + eps)
Stage 2 (our reconstruction; the paper's formula is not public, see docs/method.md):
    y = sum_k a_k * He_k(x_hat) / sqrt(k!)  +  g * clamp(m_site / s_site, -c, c)      (restore="ratio")
where He_k are the probabilists' Hermite polynomials (orthogonal for standard-normal inputs, which is
what stage 1 produces, so the basis is well conditioned), a = (0, 1, 0, ...) at initialization
(identity), g = 0 at initialization, and (m_site, s_site) are the site's *harmonization statistics*:
running estimates of the typical per-instance feature mean and standard deviation at this site, learned
without labels like BatchNorm running statistics, but of instance statistics. They are buffers and never
leave the site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uharmony.checks import one_of
from uharmony.vocabulary import RESTORE_MODES, SITE_LOCAL_OPTIONS


def hermite_basis(x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """Orthonormal probabilists' Hermite polynomials He_0..He_order of ``x`` (He_k / sqrt(k!))."""
    basis = [torch.ones_like(x), x]
    for k in range(1, order):
        basis.append(x * basis[k] - k * basis[k - 1])  # He_{k+1} = x He_k - k He_{k-1}
    return [b / math.sqrt(math.factorial(k)) for k, b in enumerate(basis[: order + 1])]


class UHarmonyNorm(nn.Module):
    """Drop-in replacement for a normalization layer of a ``spatial_dims``-D conv network.

    Args:
        num_features: channels C of the input ``(B, C, *spatial)``.
        order: polynomial order K >= 1 of stage 2 (1 = affine).
        site_local: ``"stats"`` keeps only the harmonization statistics at the site (the polynomial
            coefficients are shared by the federation); ``"stats+coefficients"`` keeps both local.
        momentum: update rate of the running harmonization statistics.
        eps: numerical floor of the instance variance.
        restore: how the site statistics re-enter (see docs/method.md):
            ``"ratio"`` (default) adds ``g * clamp(m_site / s_site)`` per channel with a learnable gain
            ``g`` (zero at initialization): the site's typical offset-to-scale ratio, which stage 1
            removed, comes back as a bounded, scale-free signal;
            ``"affine"`` computes ``y * s_site + m_site`` (the literal reading; it feeds each layer's
            input scale back into its output and trained unstably in our measurements);
            ``"none"``: the polynomial only.
        clip: bounds the polynomial terms of order >= 2 for outliers, so rare extreme values cannot
            explode through high powers: for K = 2 the quadratic term is x_hat * clamp(x_hat, -clip,
            clip) (exactly He_2 inside the range, linear outside; one fused op less); for K > 2 the
            Hermite terms are evaluated on clamp(x_hat, -clip, clip).
    """

    def __init__(
        self,
        num_features: int,
        order: int = 1,
        site_local: str = "stats",
        momentum: float = 0.1,
        eps: float = 1e-5,
        restore: str = "ratio",
        clip: float = 4.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"UHarmonyNorm: num_features must be a positive int, got {num_features!r}")
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"UHarmonyNorm: order must be an int >= 1, got {order!r}")
        one_of("UHarmonyNorm: site_local", site_local, SITE_LOCAL_OPTIONS)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"UHarmonyNorm: momentum must be in (0, 1], got {momentum!r}")
        one_of("UHarmonyNorm: restore", restore, RESTORE_MODES)
        if eps <= 0 or clip <= 0:
            raise ValueError("UHarmonyNorm: eps and clip must be positive")
        self.num_features = num_features
        self.order = order
        self.site_local = site_local
        self.momentum = momentum
        self.eps = eps
        self.restore_mode = restore
        self.clip = clip
        coeffs = torch.zeros(num_features, order + 1)
        coeffs[:, 1] = 1.0  # identity initialization
        self.coefficients = nn.Parameter(coeffs)
        self.restore_gain = nn.Parameter(torch.zeros(num_features))
        # Site harmonization statistics (site-local buffers, label-free running estimates).
        self.register_buffer("site_mean", torch.zeros(num_features))
        self.register_buffer("site_std", torch.ones(num_features))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def restore_stats(self) -> bool:
        return self.restore_mode != "none"

    @property
    def coefficients_are_local(self) -> bool:
        return self.site_local == "stats+coefficients"

    def extra_repr(self) -> str:
        return f"{self.num_features}, order={self.order}, site_local={self.site_local!r}"

    def standardize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 1: returns (x_hat, mu_inst, std_inst) with stats of shape (B, C)."""
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(f"UHarmonyNorm expects (B, {self.num_features}, *spatial), got {tuple(x.shape)}")
        dims = tuple(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, unbiased=False)
        std = torch.sqrt(var + self.eps)
        return (x - mean) / std, mean.flatten(1), std.flatten(1)

    @torch.no_grad()
    def update_site_statistics(self, inst_mean: torch.Tensor, inst_std: torch.Tensor) -> None:
        """Running (cumulative for the first 1/momentum updates) average of instance statistics."""
        self.num_updates += 1
        rate = max(self.momentum, 1.0 / float(self.num_updates))
        self.site_mean.lerp_(inst_mean.mean(0).to(self.site_mean.dtype), rate)
        self.site_std.lerp_(inst_std.mean(0).to(self.site_std.dtype), rate)

    def _effective(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scale, shift, higher-order weights) with the site statistics folded into the polynomial."""
        c = self.coefficients
        scale, shift, higher = c[:, 1], c[:, 0], c[:, 2:]
        if self.order == 2:  # He_2(t)/sqrt(2) = (t^2 - 1)/sqrt(2): fold the constant into the shift
            higher = higher / math.sqrt(2.0)
            shift = shift - higher[:, 0]
        s, m = self.site_std.to(c.dtype), self.site_mean.to(c.dtype)
        if self.restore_mode == "affine":
            return scale * s, shift * s + m, higher * s.unsqueeze(1)
        if self.restore_mode == "ratio":
            shift = shift + self.restore_gain * (m / s.clamp_min(self.eps)).clamp(-self.clip, self.clip)
        return scale, shift, higher

    def restore(self, x_hat: torch.Tensor) -> torch.Tensor:
        """Stage 2: polynomial restoration followed by re-injection of the site statistics."""
        shape = (1, self.num_features) + (1,) * (x_hat.dim() - 2)
        scale, shift, higher = self._effective()
        y = torch.addcmul(shift.view(shape), x_hat, scale.view(shape))
        return self._add_higher_order(y, x_hat, higher, shape)

    def _add_higher_order(self, y, x_hat, higher, shape):
        if self.order == 2:  # fast path: He_2(t)/sqrt(2) with t = clamp(x_hat); -1/sqrt(2) is in _effective
            inner = x_hat.clamp(-self.clip, self.clip) * higher[:, 0].view(shape)
            return torch.addcmul(y, x_hat, inner)
        if self.order > 2:
            clipped = x_hat.clamp(-self.clip, self.clip)
            for k, term in enumerate(hermite_basis(clipped, self.order)[2:]):
                y = torch.addcmul(y, term, higher[:, k].view(shape))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(f"UHarmonyNorm expects (B, {self.num_features}, *spatial), got {tuple(x.shape)}")
        if self.training and self.restore_mode != "none":
            with torch.no_grad():  # label-free running estimate; a 2x-strided subsample is plenty
                sub = x[(slice(None), slice(None)) + tuple(slice(None, None, 2 if n >= 8 else 1) for n in x.shape[2:])]
                var, mean = torch.var_mean(sub, dim=tuple(range(2, x.dim())), unbiased=False)
                self.update_site_statistics(mean, torch.sqrt(var + self.eps))
        scale, shift, higher = self._effective()
        if x[0, 0].numel() < 2:  # torch's fused kernel refuses a single voxel; it standardizes to 0
            return self.restore(self.standardize(x)[0])
        if self.order == 1:  # fused kernel: standardization and the affine restoration in one op
            return F.instance_norm(x, weight=scale, bias=shift, eps=self.eps)
        x_hat = F.instance_norm(x, eps=self.eps)
        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        y = torch.addcmul(shift.view(shape), x_hat, scale.view(shape))
        return self._add_higher_order(y, x_hat, higher, shape)


INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# every normalization layer type a network of ours may hold (FedBN keeps these at the site)
NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    *INSTANCE_NORMS,
    nn.GroupNorm,
    nn.LayerNorm,
    UHarmonyNorm,
)

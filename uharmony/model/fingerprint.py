"""A scan's acquisition fingerprint (Flower-free): what per-scan z-scoring leaves of the scanner.

Per modality, over the brain's non-zero voxels of the preprocessed (z-scored) scan: five intensity quantiles
(5, 25, 50, 75, 95 %), skewness and kurtosis (gamma, contrast compression and the bias field change the
histogram's shape), and along each of the three axes the log median absolute second difference (noise level
and blur; a thick 2-D slice blurs one axis only). These are image-quality measures of the kind MRIQC reports,
computed in one pass; no label is used.

Why the gate needs them (issue 14, docs/method.md): the features that enter the head are harmonized on
purpose, and on the S0 control, where sites differ in acquisition only, their scan descriptors told the sites
apart for 38-75 % of scans (leave-one-out, seeds 1-4), the fingerprint with them for 90-97 %.
"""

from __future__ import annotations

import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def fingerprint_size(num_modalities: int, spatial_dims: int = 3) -> int:
    """Entries per scan: per modality the quantiles, skewness, kurtosis and one second difference per axis."""
    return num_modalities * (len(QUANTILES) + 2 + spatial_dims)


def _channel(c: torch.Tensor) -> list[float]:
    inside = c != 0
    v = c[inside].double()
    dims = c.dim()
    if v.numel() < 8:  # an absent modality (zeros) or next to nothing: no evidence, the neutral values
        return [0.0] * fingerprint_size(1, dims)
    q = torch.quantile(
        v if v.numel() <= 2**24 else v[:: v.numel() // 2**24 + 1], torch.tensor(QUANTILES, dtype=v.dtype)
    )
    z = (v - v.mean()) / v.std().clamp_min(1e-12)
    out = [*q.tolist(), float(z.pow(3).mean()), float(z.pow(4).mean())]
    core = inside[(slice(1, -1),) * dims] if min(c.shape) > 2 else None
    for ax in range(dims):
        if c.shape[ax] < 3 or core is None or not bool(core.any()):
            out.append(0.0)
            continue
        n = c.shape[ax] - 2
        d2 = c.narrow(ax, 2, n) - 2 * c.narrow(ax, 1, n) + c.narrow(ax, 0, n)
        d2 = d2[tuple(slice(None) if a == ax else slice(1, -1) for a in range(dims))]
        out.append(float(d2[core].abs().median().clamp_min(1e-6).log()))
    return out


@torch.no_grad()
def acquisition_fingerprint(image: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """(``fingerprint_size(M, spatial dims)``,) float32 fingerprint of a preprocessed scan ``image``
    (M, *spatial); an absent modality (``present`` 0, or no non-zero voxel) gives zeros in its slots."""
    image = torch.as_tensor(image)
    if image.dim() not in (3, 4):
        raise ValueError(
            f"acquisition_fingerprint: expected (M, *spatial) with 2 or 3 spatial dims, got {tuple(image.shape)}"
        )
    if not torch.isfinite(image).all():
        raise ValueError("acquisition_fingerprint: the scan has non-finite values")
    pres = torch.ones(image.shape[0]) if present is None else torch.as_tensor(present).flatten()
    if pres.numel() != image.shape[0]:
        raise ValueError(f"acquisition_fingerprint: {pres.numel()} presence flags for {image.shape[0]} modalities")
    rows = []
    for c, p in zip(image.float(), pres.tolist()):
        rows += _channel(c) if p else [0.0] * fingerprint_size(1, c.dim())
    return torch.tensor(rows, dtype=torch.float32)

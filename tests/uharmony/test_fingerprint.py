"""The acquisition fingerprint: what z-scoring leaves of the scanner, measured on a scan's brain voxels."""

import pytest
import torch
import torch.nn.functional as F

from uharmony.model.fingerprint import QUANTILES, acquisition_fingerprint, fingerprint_size

SLOTS = len(QUANTILES) + 2 + 3


def _scan(noise: float, blur_z: int = 1, seed: int = 0, gain: float = 1.0) -> torch.Tensor:
    """A smooth 'anatomy' inside a ball, Gaussian noise, optional through-plane blur (a thick slice), z-scored."""
    g = torch.Generator().manual_seed(seed)
    anatomy = F.avg_pool3d(torch.randn(1, 1, 32, 32, 32, generator=g), 5, stride=1, padding=2)[0, 0] * 5
    img = anatomy + noise * torch.randn(32, 32, 32, generator=g)
    if blur_z > 1:
        img = F.avg_pool3d(img[None, None], (1, 1, blur_z), stride=1, padding=(0, 0, blur_z // 2))[0, 0]
    axis = torch.arange(32.0) - 15.5
    ball = (axis.view(-1, 1, 1) ** 2 + axis.view(1, -1, 1) ** 2 + axis.view(1, 1, -1) ** 2) < 14**2
    img = gain * img
    v = img[ball]
    return torch.where(ball, (img - v.mean()) / v.std(), torch.zeros(())).unsqueeze(0)


def test_size_and_layout():
    fp = acquisition_fingerprint(torch.cat([_scan(0.2), _scan(0.5, seed=1)]))
    assert fp.shape == (fingerprint_size(2),) == (2 * SLOTS,) and torch.isfinite(fp).all()
    assert fp[2] == pytest.approx(0.0, abs=0.1)  # the median of a z-scored symmetric scan


def test_it_sees_noise_and_a_thick_slice_on_its_own_axis_but_not_the_gain():
    base = acquisition_fingerprint(_scan(0.2))
    assert acquisition_fingerprint(_scan(0.2, gain=1000.0)) == pytest.approx(base, abs=1e-4)  # z-scored away
    noisy = acquisition_fingerprint(_scan(0.8))
    assert (noisy[-3:] > base[-3:] + 0.3).all()  # more noise: larger second differences on every axis
    thick = acquisition_fingerprint(_scan(0.8, blur_z=5))
    assert thick[-1] < noisy[-1] - 0.5 and (thick[-3:-1] - noisy[-3:-1]).abs().max() < 0.3  # z only


def test_absent_modalities_fill_zeros_and_hostile_input_is_refused():
    two = torch.cat([_scan(0.2), torch.zeros(1, 32, 32, 32)])
    fp = acquisition_fingerprint(two)
    assert torch.equal(fp[SLOTS:], torch.zeros(SLOTS))
    masked = acquisition_fingerprint(torch.cat([_scan(0.2), _scan(0.4)]), torch.tensor([True, False]))
    torch.testing.assert_close(masked, fp)
    with pytest.raises(ValueError, match="non-finite"):
        acquisition_fingerprint(torch.full((1, 8, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="expected"):
        acquisition_fingerprint(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="presence flags"):
        acquisition_fingerprint(torch.zeros(2, 8, 8, 8), torch.ones(3))

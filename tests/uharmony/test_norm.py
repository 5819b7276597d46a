import pytest
import torch

from uharmony import UHarmonyNorm
from uharmony.model.norm import hermite_basis


def test_stage1_invariant_to_per_channel_positive_scale_and_shift():
    torch.manual_seed(0)
    norm = UHarmonyNorm(3, order=3)
    norm.eval()
    x = torch.randn(2, 3, 8, 8, 8)
    scale = torch.tensor([0.5, 3.0, 20.0]).view(1, 3, 1, 1, 1)
    shift = torch.tensor([-4.0, 0.0, 100.0]).view(1, 3, 1, 1, 1)
    a, _, _ = norm.standardize(x)
    b, _, _ = norm.standardize(x * scale + shift)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm(x), norm(x * scale + shift), atol=1e-4, rtol=1e-4)
    assert torch.allclose(a.mean(dim=(2, 3, 4)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(a.std(dim=(2, 3, 4), unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_identity_initialization_is_noop_on_standardized_features():
    torch.manual_seed(0)
    norm = UHarmonyNorm(4, order=4)
    norm.eval()  # statistics at their initial (0, 1)
    x = torch.randn(3, 4, 6, 6, 6) * 5 + 2
    x_hat, _, _ = norm.standardize(x)
    torch.testing.assert_close(norm.restore(x_hat), x_hat)
    torch.testing.assert_close(norm(x), x_hat)


def test_site_statistics_track_instance_statistics_without_labels():
    torch.manual_seed(0)  # the sample's mean differs from the population's by ~0.24 for channel 2 (was flaky)
    norm = UHarmonyNorm(2, momentum=0.5)
    norm.train()
    x = torch.randn(4, 2, 6, 6, 6) * torch.tensor([2.0, 7.0]).view(1, 2, 1, 1, 1) + torch.tensor([5.0, -3.0]).view(
        1, 2, 1, 1, 1
    )
    for _ in range(20):
        norm(x)
    assert torch.allclose(norm.site_mean, x.mean(dim=(2, 3, 4)).mean(0), atol=1e-3)  # the instances' own means
    assert torch.allclose(norm.site_mean, torch.tensor([5.0, -3.0]), atol=0.3)
    assert torch.allclose(norm.site_std, torch.tensor([2.0, 7.0]), rtol=0.1)
    assert int(norm.num_updates) == 20
    # the restored output carries the site's typical statistics back: ratio mode adds g * m/s
    norm.eval()
    with torch.no_grad():
        norm.restore_gain.fill_(1.0)
    out = norm(x)
    ratio = (norm.site_mean / norm.site_std).clamp(-norm.clip, norm.clip)
    assert torch.allclose(out.mean(dim=(0, 2, 3, 4)), ratio, atol=1e-3)
    affine = UHarmonyNorm(2, momentum=0.5, restore="affine")
    affine.load_state_dict(norm.state_dict())
    affine.eval()
    assert torch.allclose(affine(x).mean(dim=(0, 2, 3, 4)), norm.site_mean, atol=1e-3)


def test_hermite_basis_is_orthonormal_for_standard_normal():
    torch.manual_seed(0)
    x = torch.randn(400_000, dtype=torch.float64)
    basis = torch.stack(hermite_basis(x, 4))
    gram = basis @ basis.T / x.numel()
    torch.testing.assert_close(gram, torch.eye(5, dtype=torch.float64), atol=0.05, rtol=0)


def test_gradients_reach_coefficients():
    norm = UHarmonyNorm(2, order=3)
    x = torch.randn(2, 2, 5, 5, 5, requires_grad=True)
    norm.train()
    norm(x)  # first step sets non-zero site statistics
    (norm(x) ** 2).sum().backward()
    assert norm.coefficients.grad is not None and norm.coefficients.grad.abs().sum() > 0
    assert norm.restore_gain.grad is not None and norm.restore_gain.grad.abs().sum() > 0
    assert x.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_features=0), "num_features"),
        (dict(num_features=2, order=0), "order"),
        (dict(num_features=2, site_local="everything"), "site_local"),
        (dict(num_features=2, momentum=0.0), "momentum"),
        (dict(num_features=2, restore="mean"), "restore"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UHarmonyNorm(**kwargs)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expects"):
        UHarmonyNorm(3)(torch.randn(1, 2, 4, 4, 4))

"""Mixed precision and memory layout: bf16 detection, the autocast context, the channels-last step."""

import pytest
import torch

import uharmony.precision as precision
from uharmony import build_model
from uharmony.federation.config import RunConfig
from uharmony.model.training import optimizer_state, predict, train_steps


def _model():
    torch.manual_seed(0)
    return build_model("dynunet", 4, 3, 2, "uharmony", filters=(4, 8, 16))


def _batches(n=3, size=16):
    g = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.randn(2, 4, size, size, size, generator=g),
            "label": (torch.rand(2, 3, size, size, size, generator=g) > 0.8).float(),
            "present": torch.ones(2, 4),
            "regions": torch.ones(2, 3),
        }
        for _ in range(n)
    ]


@pytest.mark.parametrize(
    "flags, native", [({"avx512f"}, False), ({"avx2", "fma"}, False), ({"amx_bf16"}, True), ({"avx512_bf16"}, True)]
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    assert precision.native_bf16("cpu") is native


@pytest.mark.parametrize("value, expect", [("fp32", None), ("bf16", torch.bfloat16)])
def test_the_run_config_picks_the_autocast_dtype(value, expect):
    assert RunConfig.from_flwr({"precision": value}).autocast_dtype is expect


def test_auto_precision_follows_the_machine(monkeypatch):
    cfg = RunConfig.from_flwr({"precision": "auto", "device": "cpu"})
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": True)
    assert cfg.autocast_dtype is torch.bfloat16
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": False)
    assert cfg.autocast_dtype is None


def test_autocast_runs_convolutions_in_bf16_and_none_is_fp32():
    conv = torch.nn.Conv3d(2, 2, 3)
    x = torch.randn(1, 2, 5, 5, 5)
    with precision.autocast("cpu", torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("cpu", None):
        assert conv(x).dtype == torch.float32


def test_channels_last_is_a_run_config_key_that_defaults_on():
    assert RunConfig.from_flwr({}).channels_last is True
    assert RunConfig.from_flwr({"channels-last": False}).channels_last is False


def test_the_layout_holds_inside_the_context_and_is_undone_after():
    model = _model()
    conv = next(
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1 and m.kernel_size == (3, 3, 3)
    )
    with precision.layout(model, True, model.spatial_dims):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not conv.weight.is_contiguous()
    assert conv.weight.is_contiguous()
    with precision.layout(model, False):
        assert conv.weight.is_contiguous()
    x = torch.randn(1, 4, 4, 4, 4)
    assert precision.to_layout(x, True).is_contiguous(memory_format=torch.channels_last_3d)
    assert precision.to_layout(x, False) is x
    assert precision.to_layout(torch.randn(3, 4), True).is_contiguous()  # not an image batch: unchanged


def test_a_channels_last_step_trains_the_same_model_up_to_rounding():
    """Same weights, batches and optimizer: the layout changes the summation order, not the training."""
    results = {}
    for channels_last in (False, True):
        model = _model()
        stats = train_steps(model, _batches(), 1, 1e-3, channels_last=channels_last)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert all(p.is_contiguous() for p in model.parameters())  # back in the default layout
        assert all(v.is_contiguous() for s in stats["state"].values() for v in s.values())
        results[channels_last] = (stats["loss"], params, stats["state"], model)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-4)
    assert torch.allclose(results[True][1], results[False][1], atol=1e-5)
    # the saved moments restore into a channels-last step (each in its parameter's layout) and train on
    model = results[True][3]
    more = train_steps(model, _batches(1), 1, 1e-3, state=results[True][2], channels_last=True)
    assert more["steps"] == 1 and torch.isfinite(torch.tensor(more["loss"]))
    assert set(more["state"]) == set(results[True][2])


def test_channels_last_prediction_matches_the_default_layout():
    model = _model()
    image, present = torch.randn(4, 20, 20, 20), torch.ones(4)
    a = predict(model, image, present, 1, 16)
    b = predict(model, image, present, 1, 16, channels_last=True)
    assert torch.allclose(a, b, atol=1e-5)
    assert all(p.is_contiguous() for p in model.parameters())


def test_optimizer_state_is_saved_in_the_default_layout():
    model = _model().to(memory_format=torch.channels_last_3d)
    named = list(model.named_parameters())
    opt = torch.optim.AdamW([p for _, p in named], lr=1e-3)
    for _, p in named:
        p.grad = torch.ones_like(p)
    opt.step()
    saved = optimizer_state(opt, named)
    assert all(v.is_contiguous() for s in saved.values() for v in s.values())

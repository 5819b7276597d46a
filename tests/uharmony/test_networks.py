import pytest
import torch

from uharmony import (
    NORMS,
    UHarmonyNorm,
    add_classes,
    add_domain,
    add_modality,
    build_model,
    domain_of,
    model_from_spec,
    param_roles,
)

SIZES = {"dynunet": 16, "swinunetr": 32}
SMALL = {"dynunet": dict(filters=(8, 16, 32)), "swinunetr": dict(feature_size=12)}


def _build(arch, in_ch=4, norm="uharmony", **kw):
    return build_model(arch, in_ch, 3, 2, norm, stem_channels=8, **SMALL[arch], **kw)


@pytest.mark.parametrize("arch", ["dynunet", "swinunetr"])
@pytest.mark.parametrize("in_ch", [1, 4])
def test_forward_backward_reaches_every_trainable_parameter(arch, in_ch):
    torch.manual_seed(0)
    model = _build(arch, in_ch)
    s = SIZES[arch]
    x = torch.randn(2, in_ch, s, s, s)
    single_voxel = set()  # a norm over one voxel standardizes to 0: only its constant term can learn
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: single_voxel.add(n) if inp[0][0, 0].numel() == 1 else None)
        for n, m in model.named_modules()
        if isinstance(m, UHarmonyNorm)
    ]
    out = model(x, domain=[0, 1])
    assert out.shape == (2, 3, s, s, s)
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    # SwinUNETR at 32^3 has a 1-voxel bottleneck block (encoder10); only that block may be dead
    dead_blocks = {n.rsplit(".", 1)[0] + "." for n in single_voxel}
    assert all(any(n.startswith(b) for b in dead_blocks) for n in zero), zero
    assert not zero or arch == "swinunetr"
    for h in hooks:
        h.remove()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, s, s, s)  # dataset-free (gated)


@pytest.mark.parametrize("arch", ["dynunet", "swinunetr"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("site_local", ["stats", "stats+coefficients"])
def test_param_roles_cover_every_state_key_exactly_once(arch, norm, site_local):
    model = _build(arch, norm=norm, site_local=site_local)
    state = model.state_dict()
    for local_norm in (False, True):
        roles = param_roles(model, local_norm=local_norm)
        assert list(roles) == list(state)
        assert set(roles.values()) <= {"shared", "local", "domain"}
    roles = param_roles(model)
    harmonizers = [(n, m) for n, m in model.named_modules() if isinstance(m, UHarmonyNorm)]
    assert bool(harmonizers) == (norm == "uharmony")
    for name, _ in harmonizers:
        assert roles[f"{name}.site_mean"] == "local" and roles[f"{name}.site_std"] == "local"
        expected = "local" if site_local == "stats+coefficients" else "shared"
        assert roles[f"{name}.coefficients"] == expected
    doms = domain_of(model)
    assert set(doms) == {k for k, r in roles.items() if r == "domain"}
    assert sorted(set(doms.values())) == [0, 1]
    if norm != "uharmony":
        assert "local" not in roles.values()
        fedbn = param_roles(model, local_norm=True)
        assert "local" in fedbn.values()


def test_harmonize_layers_selects_how_many_norms_are_replaced():
    full = _build("dynunet")
    n_all = sum(isinstance(m, UHarmonyNorm) for m in full.modules())
    part = _build("dynunet", harmonize_layers=3)
    assert sum(isinstance(m, UHarmonyNorm) for m in part.modules()) == 3
    assert sum(isinstance(m, torch.nn.InstanceNorm3d) for m in part.modules()) == n_all - 3
    with pytest.raises(ValueError, match="norm layers"):
        _build("dynunet", harmonize_layers=n_all + 1)


def test_missing_modalities_and_modality_adaptation_keep_old_behaviour():
    torch.manual_seed(0)
    model = _build("dynunet").eval()
    x = torch.randn(1, 4, 16, 16, 16)
    present = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        before = model(x, domain=0, present=present)
        garbage = x.clone()
        garbage[:, 1] = 1e3  # a missing modality's content must not matter
        torch.testing.assert_close(model(garbage, domain=0, present=present), before)
        idx = add_modality(model, "swi")
        assert idx == 4 and model.modalities[-1] == "swi"
        x5 = torch.cat([x, torch.randn(1, 1, 16, 16, 16)], dim=1)
        after = model(x5, domain=0, present=torch.tensor([[True, False, True, True, False]]))
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    rebuilt = model_from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())  # strict: the spec describes the extended model


def test_class_and_domain_adaptation_keep_old_behaviour():
    torch.manual_seed(0)
    model = _build("dynunet").eval()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        before_oracle = model(x, domain=1)
        assert add_classes(model, 2) == [3, 4]
        out = model(x, domain=1)
        assert out.shape[1] == 5
        torch.testing.assert_close(
            out[:, :3], before_oracle, atol=1e-6, rtol=0
        )  # conv of a wider kernel: float rounding only
        assert float(torch.sigmoid(out[:, 3:]).max()) < 0.0101  # new classes start at the prior 0.01: "absent"
        new = add_domain(model)
        assert new == 2
        torch.testing.assert_close(model(x, domain=1), out)
    model_from_spec(model.spec).load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("unet", 4, 3), {}, "arch"),
        (("dynunet", 4, 3), {"norm": "group"}, "norm"),
        (("dynunet", 0, 3), {}, "in_channels"),
        (("dynunet", 4, 3), {"num_domains": 0}, "num_domains"),
        (("dynunet", 4, 3), {"head": "mlp"}, "head"),
        (("dynunet", 2, 3), {"modalities": ["t1", "t1"]}, "distinct"),
        (("dynunet", 4, 3), {"norm": "instance", "harmonize_layers": 2}, "harmonize_layers"),
        (("swinunetr", 4, 3), {"feature_size": 10}, "multiple of 12"),
        (("dynunet", 4, 3), {"colour": "red"}, "unknown options"),
        (("dynunet", 4, 3), {"filters": (8, 16)}, "at least 3 filter levels"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(*args, **kwargs)


def test_bad_input_shape_and_presence():
    model = _build("dynunet")
    with pytest.raises(ValueError, match="modalities"):
        model(torch.randn(1, 3, 16, 16, 16))
    with pytest.raises(ValueError, match="at least one present"):
        model(torch.randn(1, 4, 16, 16, 16), present=torch.zeros(1, 4, dtype=torch.bool))

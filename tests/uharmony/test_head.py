import pytest
import torch

from uharmony import DomainGatedHead
from uharmony.model.head import PlainHead


def _window_head():
    """The earlier reconstruction: separate experts, per-window gate with running prototypes."""
    torch.manual_seed(0)
    head = DomainGatedHead(3, 8, 3, 3, temperature=0.05, experts="separate", gate="window")
    protos = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    feats = [p.view(1, 8, 1, 1, 1).expand(2, 8, 4, 4, 4).clone() for p in protos]
    head.train()
    for d, f in enumerate(feats):
        head(f, domain=d)  # sets prototype d from label-free pooled features
    head.eval()
    return head, feats


def _scan_head(scale: float = 1.0, confidence: float = 0.5):
    """The default head: residual experts (made non-zero here, as after training) and the scan gate with
    prototypes from four descriptors per domain."""
    torch.manual_seed(0)
    head = DomainGatedHead(3, 8, 3, 3, confidence=confidence).eval()
    centres = torch.randn(3, 8) * scale
    descriptors = [c + 0.05 * scale * torch.randn(4, 8) for c in centres]
    with torch.no_grad():
        for d, e in enumerate(head.experts):
            e.set_prototype(descriptors[d])
            e.conv.weight.normal_()
            e.conv.bias.normal_()
    return head, centres


def test_window_gate_picks_matching_expert_when_features_sit_on_a_prototype():
    head, feats = _window_head()
    for d, f in enumerate(feats):
        gate = head.gate(f)
        assert gate.argmax(1).tolist() == [d, d]
        assert float(gate[0, d]) > 0.99
        torch.testing.assert_close(head(f), head(f, domain=d), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_scan_gate_needs_no_temperature(scale):
    """Distances are scaled by the domains' own spread: the same decision at any feature scale."""
    head, centres = _scan_head(scale)
    probs = head.gate_probs(centres)
    assert probs.argmax(1).tolist() == [0, 1, 2]
    assert float(probs.diagonal().min()) > 0.99


def test_residual_experts_start_at_zero_so_gated_oracle_and_shared_agree():
    head = DomainGatedHead(3, 8, 3, 3)
    feats = torch.randn(2, 8, 4, 4, 4)
    shared = head.shared(head.trunk(feats))
    for out in (head(feats), head(feats, domain=1), head(feats, domain=[0, 2])):
        torch.testing.assert_close(out, shared)


def test_scan_weights_give_the_oracle_answer_and_unsure_scans_the_shared_one():
    head, centres = _scan_head(confidence=0.6)
    feats = torch.randn(1, 8, 4, 4, 4)
    sure = head.gate(centres[2:3])
    torch.testing.assert_close(head(feats, weights=sure), head(feats, domain=2), atol=1e-4, rtol=1e-3)
    between = (head.experts[0].prototype + head.experts[1].prototype).unsqueeze(0) / 2  # as far from 0 as from 1
    torch.testing.assert_close(head.gate_probs(between)[0, :2], torch.full((2,), 0.5))
    unsure = head.gate(between)
    assert float(unsure.abs().sum()) == 0.0
    torch.testing.assert_close(head(feats, weights=unsure), head.shared(head.trunk(feats)))


def test_confidence_zero_always_mixes():
    head, centres = _scan_head(confidence=0.0)
    between = (head.experts[0].prototype + head.experts[1].prototype).unsqueeze(0) / 2
    torch.testing.assert_close(head.gate(between).sum(1), torch.ones(1))


def test_oracle_mode_uses_that_domain_expert_only():
    head, feats = _window_head()
    with torch.no_grad():
        head.experts[2].conv.weight.add_(1.0)
    out0 = head(feats[0], domain=0)
    out2 = head(feats[0], domain=2)
    assert not torch.allclose(out0, out2)
    mixed = head(torch.cat([feats[0][:1], feats[0][:1]]), domain=[0, 2])
    torch.testing.assert_close(mixed[0], out0[0])
    torch.testing.assert_close(mixed[1], out2[0])


@pytest.mark.parametrize("kind", ["window", "scan"])
def test_domain_added_at_run_time_is_ignored_until_it_has_a_prototype(kind):
    head, probe = (_window_head()[0], _window_head()[1][1]) if kind == "window" else (_scan_head()[0], None)
    if probe is None:
        probe = torch.randn(2, 8, 4, 4, 4)
    before = head(probe)
    new = head.add_domain()
    assert new == 3 and head.num_domains == 4
    torch.testing.assert_close(head(probe), before)
    assert float(head.gate_probs(probe)[:, new].max()) == 0.0
    if kind == "window":
        head.train()
        head(probe * -1.0, domain=new)
    else:
        assert float(head.experts[new].conv.weight.abs().sum()) == 0.0  # a residual expert starts at zero
        head.experts[new].set_prototype(torch.randn(3, 8))
    assert head.experts[new].has_prototype


def test_new_output_channels_start_at_the_prior_in_both_heads():
    feats = torch.randn(1, 8, 2, 2, 2)
    for head in (DomainGatedHead(3, 8, 3, 2), PlainHead(3, 8, 3)):
        before = head(feats)
        head.add_output_channels(1)
        after = head(feats)
        torch.testing.assert_close(after[:, :3], before)
        torch.testing.assert_close(torch.sigmoid(after[:, 3]), torch.full_like(after[:, 3], 0.01))


def test_uniform_gate_before_any_prototype():
    head = DomainGatedHead(3, 4, 2, 2)
    assert torch.allclose(head.gate_probs(torch.randn(1, 4, 2, 2, 2)), torch.full((1, 2), 0.5))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((3, 0, 2, 2), {}, "in_channels"),
        ((3, 4, 2, 0), {}, "num_domains"),
        ((4, 4, 2, 2), {}, "spatial_dims"),
        ((3, 4, 2, 2), {"temperature": 0}, "temperature"),
        ((3, 4, 2, 2), {"experts": "shared"}, "experts"),
        ((3, 4, 2, 2), {"gate": "case"}, "gate"),
        ((3, 4, 2, 2), {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DomainGatedHead(*args, **kwargs)


def test_bad_domain_id():
    head = DomainGatedHead(3, 4, 2, 2)
    with pytest.raises(ValueError, match="domain ids"):
        head(torch.randn(1, 4, 2, 2, 2), domain=5)

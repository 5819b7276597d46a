import pytest
import torch

from uharmony import DomainGatedHead


def _head_with_prototypes():
    torch.manual_seed(0)
    head = DomainGatedHead(3, in_channels=8, out_channels=3, num_domains=3, temperature=0.05)
    protos = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    feats = [p.view(1, 8, 1, 1, 1).expand(2, 8, 4, 4, 4).clone() for p in protos]
    head.train()
    for d, f in enumerate(feats):
        head(f, domain=d)  # sets prototype d from label-free pooled features
    head.eval()
    return head, feats


def test_gate_picks_matching_expert_when_features_sit_on_a_prototype():
    head, feats = _head_with_prototypes()
    for d, f in enumerate(feats):
        gate = head.gate(f)
        assert gate.argmax(1).tolist() == [d, d]
        assert float(gate[0, d]) > 0.99
        torch.testing.assert_close(head(f), head(f, domain=d), atol=1e-4, rtol=1e-3)


def test_oracle_mode_uses_that_domain_expert_only():
    head, feats = _head_with_prototypes()
    with torch.no_grad():
        head.experts[2].conv.weight.add_(1.0)
    out0 = head(feats[0], domain=0)
    out2 = head(feats[0], domain=2)
    assert not torch.allclose(out0, out2)
    mixed = head(torch.cat([feats[0][:1], feats[0][:1]]), domain=[0, 2])
    torch.testing.assert_close(mixed[0], out0[0])
    torch.testing.assert_close(mixed[1], out2[0])


def test_domain_added_at_run_time_is_ignored_until_it_has_a_prototype():
    head, feats = _head_with_prototypes()
    before = head(feats[1])
    new = head.add_domain()
    assert new == 3 and head.num_domains == 4
    torch.testing.assert_close(head(feats[1]), before)
    head.train()
    head(feats[1] * -1.0, domain=new)
    assert head.experts[new].has_prototype


def test_uniform_gate_before_any_prototype():
    head = DomainGatedHead(3, 4, 2, 2)
    assert torch.allclose(head.gate(torch.randn(1, 4, 2, 2, 2)), torch.full((1, 2), 0.5))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((3, 0, 2, 2), {}, "in_channels"),
        ((3, 4, 2, 0), {}, "num_domains"),
        ((4, 4, 2, 2), {}, "spatial_dims"),
        ((3, 4, 2, 2), {"temperature": 0}, "temperature"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DomainGatedHead(*args, **kwargs)


def test_bad_domain_id():
    head = DomainGatedHead(3, 4, 2, 2)
    with pytest.raises(ValueError, match="domain ids"):
        head(torch.randn(1, 4, 2, 2, 2), domain=5)

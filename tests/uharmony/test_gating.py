"""The scan gate: descriptors, prototypes from a site's scans, one decision per scan in prediction."""

import pytest
import torch
import torch.nn.functional as F

from uharmony import build_model
from uharmony.model.fingerprint import acquisition_fingerprint, fingerprint_size
from uharmony.model.gating import gate_decisions, scan_descriptor, scan_gate, set_prototypes
from uharmony.model.training import predict

ROI = 16


def _model(**kw):
    torch.manual_seed(0)
    model = build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), stem_channels=8, **kw)
    with torch.no_grad():  # trained-like residual experts (they start at zero)
        for e in model.head.experts:
            e.conv.weight.normal_()
            e.conv.bias.normal_()
    return model.eval()


def _scans(domain: int, n: int, seed: int) -> list[dict]:
    """Two acquisition styles: sharp noise (domain 0) or smooth, brighter texture (domain 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 24, 24, 24, generator=g)
        if domain == 1:
            x = 3.0 * F.avg_pool3d(x.unsqueeze(0), 5, stride=1, padding=2)[0] + 1.0
        x[:, :2] = 0  # some background
        out.append({"image": x, "present": torch.ones(4, dtype=torch.bool), "domain": torch.tensor(domain)})
    return out


def test_descriptor_is_a_deterministic_vector_and_an_empty_scan_is_refused():
    model, scan = _model(), _scans(0, 1, 0)[0]
    d = scan_descriptor(model, scan["image"], scan["present"], ROI)
    assert d.shape == (8 + fingerprint_size(4),) and torch.isfinite(d).all()  # features, then the fingerprint
    torch.testing.assert_close(d[8:], acquisition_fingerprint(scan["image"], scan["present"]))
    features_only = _model(gate_descriptor="features")
    assert scan_descriptor(features_only, scan["image"], scan["present"], ROI).shape == (8,)
    torch.testing.assert_close(d, scan_descriptor(model, scan["image"], scan["present"], ROI))
    with pytest.raises(ValueError, match="no non-empty window"):
        scan_descriptor(model, torch.zeros(4, 24, 24, 24), scan["present"], ROI)


def test_prototypes_from_training_scans_route_new_scans_of_each_domain():
    model = _model()
    train = _scans(0, 3, 1) + _scans(1, 3, 2)
    assert set_prototypes(model, train, [0, 0, 0, 1, 1, 1], ROI) == {0: 3, 1: 3}
    for domain, seed in ((0, 3), (1, 4)):
        weights, summary = gate_decisions(model, _scans(domain, 3, seed), domain, ROI)
        assert summary["gate-accuracy"] == 1.0 and summary["gate-weight"] > 0.9
        assert [int(w.argmax()) for w in weights] == [domain] * 3


def test_dataset_free_prediction_uses_one_gate_decision_per_scan():
    model = _model()
    set_prototypes(model, _scans(0, 3, 1) + _scans(1, 3, 2), [0] * 3 + [1] * 3, ROI)
    scan = _scans(1, 1, 5)[0]
    weights = scan_gate(model, scan["image"], scan["present"], ROI)
    assert weights.argmax(1).item() == 1
    free = predict(model, scan["image"], scan["present"], None, ROI)
    oracle = predict(model, scan["image"], scan["present"], 1, ROI)
    other = predict(model, scan["image"], scan["present"], 0, ROI)
    assert float((free - oracle).abs().max()) < 1e-3 < float((free - other).abs().max())


def test_window_gate_models_are_left_alone():
    model = _model(experts="separate", gate="window")
    assert set_prototypes(model, _scans(0, 2, 1), [0, 0], ROI) == {}
    assert not any(e.has_prototype for e in model.head.experts)


def test_an_old_spec_without_a_gate_descriptor_rebuilds_the_features_only_head():
    from uharmony import model_from_spec

    model = _model()
    old = {k: v for k, v in model.spec.items() if k != "gate_descriptor"}  # a model saved before the fingerprint
    assert model_from_spec(old).head.fingerprint == 0
    assert model_from_spec(model.spec).head.fingerprint == fingerprint_size(4)
    with pytest.raises(ValueError, match="gate_descriptor"):
        _model(gate_descriptor="histogram")


def test_window_features_alone_are_gated_on_the_feature_part_of_the_prototypes():
    model = _model()
    set_prototypes(model, _scans(0, 3, 1) + _scans(1, 3, 2), [0] * 3 + [1] * 3, ROI)
    feats = model.features(_scans(1, 1, 5)[0]["image"][None, :, :16, :16, :16])
    assert model.head.gate_probs(feats).shape == (1, 2)  # calibration and training-mode calls pass windows
    with pytest.raises(ValueError, match="descriptors of 8 or"):
        model.head.gate_probs(torch.zeros(1, 9))


def test_reach_is_the_largest_leave_one_out_distance_and_needs_three_scans():
    from uharmony.model.head import DomainExpert, distance2

    expert = DomainExpert(3, 4, 3, zero=True)
    d = torch.tensor([[0.0, 1, 2, 3], [1, 1, 0, 3], [2, 0, 1, 1], [0, 3, 1, 0]])
    expert.set_prototype(d)
    loo = [
        distance2(d[i], torch.cat([d[:i], d[i + 1 :]]).mean(0), torch.cat([d[:i], d[i + 1 :]]).var(0, False))
        for i in range(4)
    ]
    assert float(expert.reach) == pytest.approx(float(max(loo))) and float(expert.reach) > 0
    expert.set_prototype(d[:2])
    assert float(expert.reach) == 0.0  # unknown: no variance from a single other scan


def _unseen_style(n: int, seed: int) -> list[dict]:
    """A third acquisition: thick slices along the last axis and a compressed, noisy contrast."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 24, 24, 24, generator=g).repeat_interleave(4, dim=-1)[..., :24] * 0.3
        x = x + 0.5 * torch.randn(4, 24, 24, 24, generator=g)
        x[:, :2] = 0
        out.append({"image": x, "present": torch.ones(4, dtype=torch.bool)})
    return out


@pytest.mark.parametrize("unseen", ["shared", "nearest"])
def test_a_scan_beyond_every_domains_reach_gets_the_shared_answer(unseen):
    model = _model(gate_unseen=unseen)
    set_prototypes(model, _scans(0, 8, 1) + _scans(1, 8, 2), [0] * 8 + [1] * 8, ROI)
    assert all(float(e.reach) > 0 for e in model.head.experts)
    for domain, seed in ((0, 3), (1, 4)):  # new scans of the training domains: within reach, routed
        weights, summary = gate_decisions(model, _scans(domain, 4, seed), domain, ROI)
        assert summary["gate-unseen"] == 0.0 and [int(w.argmax()) for w in weights] == [domain] * 4
    scan = _unseen_style(1, 9)[0]
    weights, summary = gate_decisions(model, [scan], 0, ROI)
    assert summary["gate-unseen"] == 1.0  # measured either way; acted on only with "shared"
    assert (float(weights[0].abs().sum()) == 0.0) == (unseen == "shared")
    free = predict(model, scan["image"], scan["present"], None, ROI)
    with torch.no_grad():  # the shared answer: the head without its residual experts
        for e in model.head.experts:
            e.conv.weight.zero_()
            e.conv.bias.zero_()
    shared = predict(model, scan["image"], scan["present"], None, ROI)
    assert (float((free - shared).abs().max()) < 1e-5) == (unseen == "shared")


def test_a_model_saved_before_the_reach_loads_with_the_test_off(tmp_path):
    from uharmony import model_from_spec
    from uharmony.records.checkpoint import load_checkpoint, save_checkpoint

    model = _model()
    set_prototypes(model, _scans(0, 4, 1) + _scans(1, 4, 2), [0] * 4 + [1] * 4, ROI)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith(".reach")}
    save_checkpoint(tmp_path, 3, model.spec, old)
    again = model_from_spec(model.spec)
    again.load_state_dict(load_checkpoint(tmp_path)["state"])  # strict: each reach is filled with 0 (unknown)
    assert all(float(e.reach) == 0 for e in again.head.experts)
    assert all(float(e.reach) > 0 for e in model.head.experts)
    assert not bool(again.head.beyond_reach(torch.full((1, 8 + fingerprint_size(4)), 1e6)).any())
    assert bool(model.head.beyond_reach(torch.full((1, 8 + fingerprint_size(4)), 1e6)).all())
    with pytest.raises(ValueError, match="gate_unseen"):
        _model(gate_unseen="ignore")

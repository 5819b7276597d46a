"""The scan gate: descriptors, prototypes from a site's scans, one decision per scan in prediction."""

import pytest
import torch
import torch.nn.functional as F

from uharmony import build_model
from uharmony.fingerprint import acquisition_fingerprint, fingerprint_size
from uharmony.gating import gate_decisions, scan_descriptor, scan_gate, set_prototypes
from uharmony.training import predict

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

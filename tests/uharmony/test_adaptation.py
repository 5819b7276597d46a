"""Growing a trained model for a joining site: what is added, what is kept, and how resume recognizes it."""

import pytest
import torch

from uharmony import build_model, extend_model, model_from_spec
from uharmony.federation.federated import (
    ModelRoles,
    extend_global_model,
    global_state_of,
    load_global_and_local,
    model_needs,
)
from uharmony.model.adaptation import spec_differences, spec_extends
from uharmony.model.fingerprint import acquisition_fingerprint

TOL = 1e-5  # the stated tolerance for old outputs right after an extension (float rounding only)


def _trained_like(head="gated", norm="uharmony", **kw):
    """A small model whose weights, statistics and prototypes are off their initialization."""
    torch.manual_seed(0)
    model = build_model("dynunet", 4, 3, 3, norm, head=head, filters=(8, 16, 32), stem_channels=8, **kw)
    model.train()
    x = torch.randn(3, 4, 16, 16, 16)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if model.gated:
            model(x, domain=[0, 1, 2])  # the site statistics (and the window gate's prototypes)
            if model.head.gate_kind == "scan":  # two scan descriptors per domain (features, fingerprint)
                pooled = model.eval().features(x).flatten(2).mean(-1)
                for d in range(3):
                    desc = torch.cat([pooled[d], acquisition_fingerprint(x[d])])
                    model.head.experts[d].set_prototype(desc + 0.01 * torch.randn(2, desc.shape[0]))
    return model.eval()


@pytest.mark.parametrize("head, strategy", [("gated", "uharmony"), ("plain", "fedavg"), ("plain", "fedbn")])
def test_old_outputs_stay_within_tolerance_after_a_join(head, strategy):
    model = _trained_like(head, "uharmony" if head == "gated" else "instance")
    roles = ModelRoles(model, strategy)
    state = global_state_of(model, roles)
    local = {k: v.clone() for k, v in model.state_dict().items() if k in roles.keys("local")}
    x = torch.randn(2, 4, 16, 16, 16)
    present = torch.tensor([[True, True, True, True], [False, True, True, True]])
    with torch.no_grad():
        before = {d: model(x, domain=d, present=present) for d in ([None, 0, 2] if model.gated else [None])}

    grown, new_roles, new_state, added = extend_global_model(
        model.spec, state, strategy, ["t1", "t1ce", "t2", "flair", "adc"], ["ET", "TC", "WT", "RC"], 3
    )
    assert added == {"modalities": ["adc"], "regions": ["RC"], "domains": [3] if head == "gated" else []}
    assert set(new_roles.keys("local")) == set(roles.keys("local"))  # the sites' saved state still fits
    for k, v in state.items():  # what was learned is kept (grown head entries keep their old channels)
        torch.testing.assert_close(
            new_state[k][: v.shape[0]] if new_state[k].shape != v.shape else new_state[k], v, rtol=0, atol=0, msg=k
        )
    site = model_from_spec(grown.spec).eval()  # what an old site rebuilds from the new spec and its own state
    load_global_and_local(site, new_roles, new_state, local or None)
    x5 = torch.cat([x, torch.randn(2, 1, 16, 16, 16)], 1)  # old sites have no ADC: present False
    p5 = torch.cat([present, torch.zeros(2, 1, dtype=torch.bool)], 1)
    with torch.no_grad():
        for d, out in before.items():
            after = site(x5, domain=d, present=p5)
            assert after.shape[1] == 4
            assert float((after[:, :3] - out).abs().max()) <= TOL, d
            assert float(torch.sigmoid(after[:, 3]).max()) < 0.0101  # the new class starts at the prior 0.01


def test_extend_model_adds_only_what_is_missing_and_reports_it():
    model = _trained_like()
    assert extend_model(model, ["t1ce", "flair"], ["WT"], 1) == {"modalities": [], "regions": [], "domains": []}
    assert model_needs(model, ["t1", "swi", "adc"], ["TC", "RC"], 4) == {
        "modalities": ["swi", "adc"],
        "regions": ["RC"],
        "domains": [3, 4],
    }
    assert model.spec["in_channels"] == 4 and model.head.num_domains == 3  # the dry run changed nothing
    added = extend_model(model, ["t1", "swi", "adc"], ["TC", "RC"], 4)
    assert added == {"modalities": ["swi", "adc"], "regions": ["RC"], "domains": [3, 4]}
    assert model.modalities[-2:] == ["swi", "adc"] and model.regions == ["ET", "TC", "WT", "RC"]
    rebuilt = model_from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())  # strict: the spec describes the grown model
    # a new domain takes no part in the gate until it has a prototype
    assert float(model.head.gate(torch.randn(2, 8, 4, 4, 4))[:, 3:].max()) == 0.0


def test_spec_extends_accepts_growth_and_rejects_other_changes():
    base = build_model("dynunet", 4, 3, 3, "uharmony", filters=(8, 16, 32)).spec
    grown = build_model("dynunet", 4, 3, 3, "uharmony", filters=(8, 16, 32))
    extend_model(grown, ["adc"], ["RC"], 3)
    assert spec_extends(base, base) and spec_extends(base, grown.spec)
    assert not spec_extends(grown.spec, base)  # shrinking is not an extension
    assert not spec_extends(base, {**grown.spec, "filters": (8, 16, 64)})
    assert not spec_extends(base, {**grown.spec, "modalities": ["adc", "t1", "t1ce", "t2", "flair"]})
    old = {k: v for k, v in base.items() if k != "regions"}  # checkpoints from before regions were named
    assert spec_extends(old, base) and spec_extends(old, grown.spec)


def test_extension_refuses_what_it_cannot_do():
    model = _trained_like()
    roles = ModelRoles(model, "local")
    with pytest.raises(ValueError, match="no global model"):
        extend_global_model(model.spec, global_state_of(model, roles), "local", ["adc"], [], None)
    with pytest.raises(ValueError, match="clash"):
        from uharmony import add_classes

        add_classes(model, ["WT"])
    with pytest.raises(ValueError, match="non-negative"):
        extend_model(model, [], [], -1)


def test_a_class_only_the_new_domain_knows_survives_the_gated_mix():
    """Old experts hold "absent" logits for a class they never learnt; the gate must not let them drown it."""
    model = _trained_like(experts="separate", gate="window")  # residual experts need no channel mask
    extend_model(model, ["adc"], ["ET", "TC", "WT", "RC"], 3)
    assert model.spec["expert_regions"] == [["ET", "TC", "WT"]] * 3 + [["ET", "TC", "WT", "RC"]]
    with torch.no_grad():
        model.head.experts[3].conv.bias[3] = 10.0  # the new site's expert learnt: cavity present
        x = torch.randn(2, 5, 16, 16, 16)
        feats = model.backbone(model.stems(x))
        pooled = model.head.pooled(feats)
        model.head.experts[3].prototype.copy_(pooled[0])  # scan 0 looks like the new site
        model.head.experts[3].count.fill_(1)
        weights = model.head.gate(feats)
        assert 0 < float(weights[0, 3]) < 1  # a soft gate: some weight on the old experts too
        gated = model(x)
        new_expert = model(x, domain=3)
        torch.testing.assert_close(gated[0, 3], new_expert[0, 3])  # RC comes from the expert that knows it
        plain = (
            weights.view(2, 4, 1, 1, 1, 1) * torch.stack([e(model.head.trunk(feats)) for e in model.head.experts], 1)
        ).sum(1)
        torch.testing.assert_close(gated[:, :3], plain[:, :3])  # shared regions: the ordinary gated mix
    rebuilt = model_from_spec(model.spec)
    assert torch.equal(rebuilt.head.knows, model.head.knows)
    rebuilt.load_state_dict(model.state_dict())  # the mask is structure (spec), not state
    assert "knows" not in str(list(model.state_dict()))


def test_a_refused_resume_can_name_what_differs():
    base = {"arch": "dynunet", "tasks": ["presence"], "presence_pool": "multiscale", "modalities": ["t1"]}
    old = {"arch": "dynunet", "tasks": ["presence"], "modalities": ["t1", "adc"]}  # before the key; grown by a join
    assert spec_differences(base, old) == "presence_pool: run 'multiscale', checkpoint 'absent'"
    assert spec_differences(base, dict(base, modalities=["t1", "flair"])) == ""  # what joins extend is not named

"""The optimizer: decoupled weight decay, and a decay of its own for a residual gated head's experts."""

import pytest
import torch

from uharmony import build_model
from uharmony.model.training import make_optimizer, residual_expert_names


def _model(experts="residual", head="gated"):
    torch.manual_seed(0)
    kw = {"experts": experts} if head == "gated" else {}
    return build_model("dynunet", 4, 3, 2, "uharmony", head=head, filters=(4, 8, 16), **kw)


@pytest.mark.parametrize(
    "experts, head, any_named", [("residual", "gated", True), ("separate", "gated", False), (None, "plain", False)]
)
def test_residual_expert_parameters_are_found_by_module_type(experts, head, any_named):
    model = _model(experts, head)
    names = residual_expert_names(model)
    assert bool(names) == any_named
    experts_params = {n for n, _ in model.head.experts.named_parameters(prefix="head.experts")} if any_named else set()
    assert names == experts_params  # every expert parameter, nothing else (not the shared conv)


def test_the_residual_decay_applies_to_the_experts_alone():
    model = _model()
    named = [(n, p) for n, p in model.named_parameters()]
    names = residual_expert_names(model)
    with torch.no_grad():
        for _, p in named:
            p.fill_(1.0)
    opt = make_optimizer(named, "adamw", 0.1, 0.01, decay=dict.fromkeys(names, 2.0))
    for _, p in named:
        p.grad = torch.zeros_like(p)  # no gradient: what moves is the decay alone
    opt.step()
    for n, p in named:
        expected = 1 - 0.1 * (2.0 if n in names else 0.01)
        assert torch.allclose(p, torch.full_like(p, expected)), n
    assert len(make_optimizer(named, "adamw", 0.1, 0.01).param_groups) == 1  # by default one group, as before
    assert len(make_optimizer(named, "adamw", 0.1, 0.01, decay=dict.fromkeys(names, 0.01)).param_groups) == 1

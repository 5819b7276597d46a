"""The tumour-type head (UMS-Rep's scan-level second task): built, read and grouped like the presence head."""

import pytest
import torch

from uharmony.model.networks import build_model, model_from_spec
from uharmony.model.task_heads import PresenceHead, TypeHead, forward_tasks
from uharmony.umsrep.plans import module_groups
from uharmony.vocabulary import TUMOUR_TYPES

from .test_umsrep_library import scan, tiny


def test_a_type_head_gives_one_logit_per_type_and_survives_its_spec():
    model = tiny(("tumour-type",), types=TUMOUR_TYPES).eval()
    head = model.tasks["tumour-type"]
    assert isinstance(head, TypeHead) and not isinstance(head, PresenceHead) and head.types == TUMOUR_TYPES
    b = scan()
    x, present = b["image"], b["present"]
    out = forward_tasks(model, x, present, want=("seg", "tumour-type"))
    assert out["tumour-type"].shape == (2, len(TUMOUR_TYPES)) and out["seg"].shape[1] == 3
    assert not out["tumour-type"].any()  # every type equally likely at the start
    again = model_from_spec(model.spec)
    again.load_state_dict(model.state_dict())
    assert again.tasks["tumour-type"].types == TUMOUR_TYPES and again.spec["types"] == list(TUMOUR_TYPES)


def test_beside_a_bottleneck_presence_head_each_reads_what_it_reads_alone():
    both = tiny(("presence", "tumour-type"), types=("a", "b")).eval()
    alone = tiny(("presence",)).eval()
    with torch.no_grad():
        for m in (both, alone):  # a presence head that answers something: its output layer off zero
            torch.manual_seed(3)
            m.tasks["presence"].net[3].weight.normal_()
        alone.load_state_dict({k: v for k, v in both.state_dict().items() if not k.startswith("tasks.tumour-type.")})
        b = scan()
        x, present = b["image"], b["present"]
        p_both = forward_tasks(both, x, present, want=("presence", "tumour-type"))["presence"]
        p_alone = forward_tasks(alone, x, present, want=("presence",))["presence"]
    assert not both.tasks["presence"].multiscale and both.tasks["tumour-type"].multiscale
    assert torch.allclose(p_both, p_alone, atol=1e-6) and p_both.abs().sum() > 0


def test_the_type_heads_weights_are_a_group_of_their_own():
    model = tiny(("presence", "tumour-type"), types=("a", "b"))
    groups = module_groups(model)
    assert groups["tumour-type"] and groups["presence"] and not groups["tumour-type"] & groups["presence"]
    assert all(k.startswith("tasks.tumour-type.") for k in groups["tumour-type"])
    assert sum(len(g) for g in groups.values()) == len(model.state_dict())  # every key in exactly one group


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(tasks=("tumour-type",), types=("glioma",)), "at least two distinct types"),
        (dict(tasks=("tumour-type",), types=("glioma", "glioma")), "at least two distinct types"),
        (dict(tasks=("presence",), types=("a", "b")), "tasks including 'tumour-type'"),
        (dict(types=("a", "b")), "tasks including 'tumour-type'"),
    ],
)
def test_bad_type_settings_are_refused_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), **kw)

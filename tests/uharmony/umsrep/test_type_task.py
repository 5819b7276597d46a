"""UMS-Rep's scan-level second task, trained: the run config, the loss on typed tumour patches, the plans,
a site's score, and what the server takes from a reply."""

import pytest
import torch

from uharmony.federation.config import RunConfig
from uharmony.umsrep.plans import get_plan, module_groups
from uharmony.umsrep.training import finetune_steps
from uharmony.umsrep.type_task import TASK, type_accuracy, type_loss, type_mask

from .test_umsrep_library import scan, tiny


def typed(kinds=(0, 1)):
    b = scan()
    b["tumour_type"] = torch.tensor(kinds)
    return b


def test_the_run_config_builds_the_heads_it_names_with_the_types_it_lists():
    cfg = RunConfig(tasks="presence,tumour-type", tumour_types="glioma,metastasis,other")
    cfg.check()
    model = cfg.build_model(2)
    assert set(model.tasks) == {"presence", TASK} and model.tasks[TASK].types == ("glioma", "metastasis", "other")
    assert RunConfig().build_model(2).tasks.keys() == set() and cfg.uses_plan
    for bad, words in (
        (dict(tasks="presence,types"), "'tasks'"),
        (dict(tasks="tumour-type", tumour_types="glioma"), "at least two distinct types"),
        (dict(tasks="tumour-type", tumour_types="glioma,Glioma!"), "'tumour-types': a tumour type"),
    ):
        with pytest.raises(ValueError, match=words):
            RunConfig(**bad).check()


def test_the_loss_reads_only_patches_with_tumour_and_a_type():
    label = torch.zeros(3, 3, 4, 4, 4)
    label[0, 2, 1, 1, 1] = label[2, 2, 1, 1, 1] = 1  # patches 0 and 2 hold tumour
    types = torch.tensor([1, 0, -1])  # patch 2's case has no type among the run's
    assert type_mask(types, label).tolist() == [True, False, False]
    logits = torch.tensor([[0.0, 2.0], [5.0, 0.0], [5.0, 0.0]])
    assert torch.isclose(type_loss(logits, types, label), torch.nn.functional.cross_entropy(logits[:1], types[:1]))
    assert type_loss(logits, torch.tensor([-1, -1, -1]), label) is None


@pytest.mark.parametrize("plan", ["joint", "independent-head", "full"])
def test_the_type_head_trains_under_the_plans_that_train_it_and_only_those(plan):
    model = tiny(("tumour-type",), types=("a", "b"))
    head = model.tasks[TASK].net[3].weight
    before = head.detach().clone()
    out = finetune_steps(model, [typed()] * 3, get_plan(plan), 0, 1e-2)
    assert out["steps"] == 3
    assert (not torch.equal(head, before)) == (plan != "full")  # full: segmentation's loss only
    if plan != "full":
        assert module_groups(model)[TASK] <= get_plan(plan).trained_keys(model)  # and its weights are sent


def test_the_type_head_learns_separable_types():
    torch.manual_seed(0)
    model = tiny(("tumour-type",), types=("bright", "dark"))
    b = typed()
    b["image"][1] = -b["image"][1].abs()  # the second case's tumour region is dark, the first's bright
    b["image"][0] = b["image"][0].abs()
    finetune_steps(model, [b] * 40, get_plan("joint"), 0, 3e-3)
    model.eval()
    from uharmony.model.task_heads import forward_tasks

    with torch.no_grad():
        logits = forward_tasks(model, b["image"], b["present"], want=(TASK,))[TASK]
    assert logits.argmax(1).tolist() == [0, 1]


def test_a_sites_score_counts_typed_scans_with_tumour_only():
    model = tiny(("tumour-type",), types=("a", "b")).eval()
    with torch.no_grad():
        model.tasks[TASK].net[3].bias.copy_(torch.tensor([1.0, 0.0]))  # always "a"
    b = scan(batch=1, n=24)
    item = {"image": b["image"][0], "label": b["label"][0], "present": b["present"][0]}
    empty = {**item, "label": torch.zeros_like(item["label"]), "tumour_type": 0}
    items = [{**item, "tumour_type": 0}, {**item, "tumour_type": 1}, {**item, "tumour_type": -1}, empty]
    assert type_accuracy(model, items, roi=16, seed=0, per_case=2) == {"type-accuracy": 0.5, "type-cases": 2}
    assert type_accuracy(model, items[2:], roi=16, seed=0)["type-cases"] == 0


def test_the_run_log_files_each_sites_type_score_and_weighs_the_mean_by_scans(tmp_path):
    from uharmony.records.runlog import RunLog

    log = RunLog(tmp_path, "r")
    per_site = {
        "1": {"dice-wt-gated": 0.8, "type-accuracy-gated": 1.0, "type-cases": 3},
        "2": {"dice-wt-gated": 0.6, "type-accuracy-gated": 0.0, "type-cases": 1},
        "3": {"dice-wt-gated": 0.7, "type-cases": 0},  # no typed scan: nothing filed
    }
    summary = log.evaluation(4, "uharmony", per_site)
    assert summary["type-accuracy"] == 0.75
    typed = [r for r in log.records() if r.get("event") == "type"]
    assert [(r["site"], r["type-accuracy"], r["type_cases"]) for r in typed] == [("1", 1.0, 3), ("2", 0.0, 1)]

"""UMS-Rep library: noise, heads, plans (what each trains and sends), training steps, recalibration."""

import pytest
import torch

from uharmony import build_model, model_from_spec
from uharmony.model.adaptation import add_classes, add_modality
from uharmony.model.norm import UHarmonyNorm
from uharmony.model.task_heads import forward_tasks
from uharmony.umsrep.plans import FINETUNE, PLANS, get_plan, module_groups
from uharmony.umsrep.training import (
    brain_mask,
    corrupt,
    finetune_steps,
    masked_mse,
    presence_targets,
    pretrain_steps,
    recalibrate,
)


def tiny(tasks=("presence",), **kw):
    torch.manual_seed(0)
    return build_model("dynunet", 4, 3, 2, "uharmony", filters=(8, 16, 32), tasks=tasks, **kw)


def scan(batch=2, n=16):
    torch.manual_seed(1)
    x = torch.zeros(batch, 4, n, n, n)
    x[:, :, 2:-2, 2:-2, 2:-2] = torch.randn(batch, 4, n - 4, n - 4, n - 4)
    label = torch.zeros(batch, 3, n, n, n)
    label[:, :, 5:9, 5:9, 5:9] = 1
    return {
        "image": x,
        "label": label,
        "present": torch.ones(batch, 4, dtype=torch.bool),
        "regions": torch.ones(batch, 3, dtype=torch.bool),
    }


@pytest.mark.parametrize("kind", ["rician", "gaussian"])
def test_noise_touches_brain_voxels_of_present_modalities_only(kind):
    b = scan()
    present = torch.tensor([[True, True, False, True]] * 2)
    b["image"][:, 2] = 0
    mask = brain_mask(b["image"], present)
    noisy = corrupt(b["image"], mask, kind, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[~mask], b["image"][~mask])
    err = (noisy - b["image"])[mask]
    assert 0.1 < float(err.std()) < 0.35
    if kind == "rician":  # the magnitude stays above the brain's minimum: a non-negative magnitude image
        floor = b["image"][mask].min()
        assert float(noisy[mask].min()) >= float(floor) - 1e-5
    with pytest.raises(ValueError, match="noise must be one of"):
        corrupt(b["image"], mask, "poisson", 0.2)


def test_heads_share_one_trunk_pass_and_grow_with_the_model():
    model = tiny(("recon", "presence"))
    b = scan()
    out = forward_tasks(model, b["image"], b["present"], domain=0, want=("seg", "recon", "presence"))
    assert out["seg"].shape == (2, 3, 16, 16, 16) and out["presence"].shape == (2, 3)
    assert torch.equal(out["recon"], b["image"])  # the zero-initialized residual: the identity at start
    add_modality(model, "adc")
    add_classes(model, ["RC"])
    x = torch.cat([b["image"], torch.zeros(2, 1, 16, 16, 16)], 1)
    out = forward_tasks(model, x, torch.ones(2, 5, dtype=torch.bool), domain=0, want=("recon", "presence"))
    assert out["recon"].shape[1] == 5 and out["presence"].shape[1] == 4
    rebuilt = model_from_spec(model.spec)  # a checkpoint of the grown model rebuilds it
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_a_multiscale_presence_head_reads_every_encoder_scale_and_survives_a_checkpoint():
    from uharmony.federation.config import RunConfig

    model = tiny(("presence",), presence_pool="multiscale")
    head = model.tasks["presence"]
    assert head.multiscale and head.net[0].in_features == 2 * (8 + 16 + 32)
    assert tiny().tasks["presence"].net[0].in_features == 2 * 32 and "presence_pool" not in tiny().spec
    b = scan()
    out = forward_tasks(model, b["image"], b["present"], domain=0, want=("seg", "presence"))
    assert out["presence"].shape == (2, 3)
    seen = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append([tuple(t.shape) for t in args[0]]))
    forward_tasks(model, b["image"], b["present"], want=("presence",))
    hook.remove()
    assert seen == [[(2, 8, 16, 16, 16), (2, 16, 8, 8, 8), (2, 32, 4, 4, 4)]]  # every scale, the bottleneck last
    with torch.no_grad():
        head.net[3].weight.normal_()  # (it starts at zero: the comparison below needs a live output)
    rebuilt = model_from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval(), model.eval()
    assert rebuilt.tasks["presence"].multiscale
    assert torch.allclose(
        forward_tasks(rebuilt, b["image"], b["present"], want=("presence",))["presence"],
        forward_tasks(model, b["image"], b["present"], want=("presence",))["presence"],
    )
    cfg = RunConfig.from_flwr({"tasks": "presence", "presence-pool": "multiscale", "filters": "8,16,32"})
    assert cfg.build_model(2).tasks["presence"].multiscale
    with pytest.raises(ValueError, match="presence-pool"):
        RunConfig.from_flwr({"tasks": "presence", "presence-pool": "everything"})


def test_module_groups_partition_the_state_by_type():
    model = tiny(("recon", "presence"))
    groups = module_groups(model)
    keys = [k for g in groups.values() for k in g]
    assert sorted(keys) == sorted(model.state_dict()) and len(keys) == len(set(keys))
    assert all(k.startswith("head.") for k in groups["seg"])
    assert groups["decoder"] and groups["encoder"] and groups["recon"] and groups["presence"]


def test_independent_plans_send_a_part_of_the_model():
    model = build_model("dynunet", 4, 3, 5, "uharmony", filters=(8, 16, 32, 64), tasks=("presence",))
    state = model.state_dict()
    size = {k: v.numel() * v.element_size() for k, v in state.items()}
    share = sum(size[k] for k in get_plan("independent-head").trained_keys(model)) / sum(size.values())
    assert share <= 0.02, share
    share = sum(size[k] for k in get_plan("independent").trained_keys(model)) / sum(size.values())
    assert 0.02 < share <= 0.4, share  # the decoder and the heads; the encoder frozen and not sent
    assert sum(size[k] for k in get_plan("joint").trained_keys(model)) / sum(size.values()) > 0.9


def test_every_plan_trains_something_and_names_known_groups():
    model = tiny(("presence",))
    assert set(FINETUNE) == set(PLANS) - {"pretrain"}
    for plan in PLANS.values():
        assert plan.trained_keys(tiny(("recon",)) if plan.name == "pretrain" else model)
    with pytest.raises(ValueError, match="unknown module groups"):
        type(get_plan("full"))("x", "y", ("nose",))


def test_pretraining_learns_to_denoise_a_fixed_batch():
    model = tiny(("recon",))
    b = scan()
    grid = torch.linspace(0, 3.14, 12)
    smooth = torch.sin(grid)[:, None, None] * torch.cos(grid)[None, :, None] + torch.sin(2 * grid)[None, None, :]
    b["image"][:, :, 2:-2, 2:-2, 2:-2] = smooth + torch.arange(4.0).view(1, 4, 1, 1, 1) * 0.1  # anatomy is smooth
    mask = brain_mask(b["image"], b["present"])
    gen = torch.Generator().manual_seed(3)
    noisy = corrupt(b["image"], mask, "gaussian", 0.5, gen)
    before = float(masked_mse(noisy, b["image"], mask))
    pretrain_steps(model, [b] * 40, "gaussian", (0.5,), 0.01, seed=3)
    model.eval()
    with torch.no_grad():
        den = forward_tasks(model, noisy, b["present"], want=("recon",))["recon"]
    assert float(masked_mse(den, b["image"], mask)) < 0.5 * before  # > 3 dB


def test_recalibration_changes_statistics_only():
    model = tiny(())
    params = {n: p.clone() for n, p in model.named_parameters()}
    norm = next(m for m in model.modules() if isinstance(m, UHarmonyNorm))
    before = norm.site_std.clone()
    b = scan()
    b["image"] = b["image"] * 3 + 1
    assert recalibrate(model, [b, b]) == 2
    assert not torch.allclose(norm.site_std, before)
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("plan", ["independent", "independent-head", "joint", "alternating", "full"])
def test_a_plan_changes_exactly_the_groups_it_trains(plan):
    model = tiny(("presence",), experts="residual")
    groups = module_groups(model)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    out = finetune_steps(model, [scan()] * 4, get_plan(plan), 0, 1e-2, alternate=2)
    # every task trains on every batch: alternating replays each block for the second task
    assert out["steps"] == (8 if plan == "alternating" else 4) and out["state"]
    changed = {n for n, p in params.items() if not torch.equal(p, before[n])}
    trained = get_plan(plan).trained_keys(model)
    assert changed <= trained, sorted(changed - trained)[:3]
    for g in ("encoder", "decoder", "seg", "presence"):
        if groups[g] & set(params) and g in get_plan(plan).trains and (g != "presence" or plan != "full"):
            assert changed & groups[g], f"{plan}: nothing of {g} changed"
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the steps


def test_alternating_gives_each_task_every_batch_in_blocks():
    from uharmony.umsrep.training import _schedule

    order = [(b, t) for b, (t,) in _schedule(range(5), get_plan("alternating"), ["seg", "presence"], 2)]
    assert order == [(0, "seg"), (1, "seg"), (0, "presence"), (1, "presence"), (2, "seg"), (3, "seg"),
                     (2, "presence"), (3, "presence"), (4, "seg"), (4, "presence")]  # fmt: skip
    both = list(_schedule(range(3), get_plan("independent"), ["seg", "presence"], 2))
    assert [t for _, t in both] == [["seg", "presence"]] * 3


def test_a_fresh_presence_head_starts_at_the_base_rate_and_only_once():
    model = tiny(("presence",))
    last = model.tasks["presence"].net[-1]
    assert not last.weight.any() and not last.bias.any()  # zero output layer: no common-mode push at step 0
    b = scan(batch=4)
    b["label"][3] = 0  # 3 of 4 patches hold every region
    finetune_steps(model, [b], get_plan("independent-head"), 0, 1e-9)
    assert torch.allclose(last.bias, torch.logit(torch.tensor(0.75)).expand(3), atol=1e-3)
    b["label"][:] = 0
    finetune_steps(model, [b], get_plan("independent-head"), 0, 1e-9)  # trained once: never reset
    assert torch.allclose(last.bias, torch.logit(torch.tensor(0.75)).expand(3), atol=1e-3)


def test_presence_scores_report_auroc_beside_accuracy():
    from uharmony.umsrep.training import presence_accuracy

    model = tiny(("presence",))
    b = scan(batch=1, n=32)
    item = {k: v[0] for k, v in b.items()}
    item["label"] = torch.zeros(3, 32, 32, 32)
    item["label"][:, 4:10, 4:10, 4:10] = 1
    scores = presence_accuracy(model, [item, item], 16, seed=0, per_case=4)
    assert set(scores) == {f"presence-{r}" for r in ("et", "tc", "wt")} | {
        f"presence-auroc-{r}" for r in ("et", "tc", "wt")
    }
    import uharmony.umsrep.training as training

    def oracle(net, x, present, domain=None, gate_weights=None, want=()):  # the patch's own answer, as a logit
        inside = (x[:, 0].flatten(1) > 0).any(1).float()  # the image is the lesion mask here
        return {"presence": (inside * 2 - 1).view(-1, 1).expand(-1, 3) * 5}

    item["image"] = torch.zeros(4, 32, 32, 32)
    item["image"][:, 4:10, 4:10, 4:10] = 1.0  # image content where the lesion is
    original = training.forward_tasks
    training.forward_tasks = oracle
    try:
        right = presence_accuracy(model, [item], 16, seed=0, per_case=8)
        training.forward_tasks = lambda *a, **k: {"presence": -oracle(*a, **k)["presence"]}
        wrong = presence_accuracy(model, [item], 16, seed=0, per_case=8)
    finally:
        training.forward_tasks = original
    assert right["presence-auroc-wt"] == 1.0 and right["presence-wt"] == 1.0
    assert wrong["presence-auroc-wt"] == 0.0 and wrong["presence-wt"] == 0.0


def test_presence_targets_read_the_patch():
    label = torch.zeros(2, 3, 4, 4, 4)
    label[0, 2, 1, 1, 1] = 1
    assert presence_targets(label).tolist() == [[0, 0, 1], [0, 0, 0]]


def test_the_presence_head_learns_presence_behind_instance_norm():
    """The bottleneck ends with instance normalization (each channel's spatial mean is fixed), so the head pools
    the maximum too; with mean pooling alone it stayed at the base rate in our first evidence run."""
    torch.manual_seed(0)
    model = tiny(("presence",))
    gen = torch.Generator().manual_seed(1)
    x, label = torch.randn(4, 4, 16, 16, 16, generator=gen) * 0.3, torch.zeros(4, 3, 16, 16, 16)
    for i in (0, 2):
        x[i, :, 4:10, 4:10, 4:10] += 2.0
        label[i, :, 4:10, 4:10, 4:10] = 1
    batch = {"image": x, "label": label, "present": torch.ones(4, 4, dtype=torch.bool)}
    batch["regions"] = torch.ones(4, 3, dtype=torch.bool)
    finetune_steps(model, [batch] * 60, get_plan("joint"), 0, 3e-3)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(forward_tasks(model, x, batch["present"], want=("presence",))["presence"])[:, 2]
    assert float(p[[0, 2]].min()) > 0.5 > float(p[[1, 3]].max()), p


def test_inpainting_blanks_brain_cubes_and_phase_p_learns_to_fill_them():
    from uharmony.umsrep.training import blank_cubes

    b = scan()
    mask = brain_mask(b["image"], b["present"])
    blanked = blank_cubes(b["image"], mask, torch.Generator().manual_seed(0))
    changed = blanked != b["image"]
    assert changed.any() and not (changed & ~mask).any() and (blanked[changed] == 0).all()
    # every modality of a voxel is blanked together (the content cannot be read from another contrast)
    assert torch.equal(changed.any(1), changed[:, :1].expand_as(changed).any(1))
    model = tiny(("recon",))
    out = pretrain_steps(model, [b] * 3, "gaussian", (0.2,), 0.01, seed=3, pretext="denoise+inpaint")
    assert out["steps"] == 3 and out["loss"] > 0


def test_skip_dropping_zeroes_the_top_skips_per_sample_and_leaves_no_hook():
    """Issue 34 item 1: phase P's ``denoise+skipdrop`` makes the decoder restore some samples without the top
    skip connections, so what it restores must come through the deeper layers."""
    from uharmony.model.task_heads import top_skip_blocks, top_skips_dropped

    model = tiny(("recon",)).eval()
    x = scan()["image"]
    top = top_skip_blocks(model.backbone, 2)
    assert top[0] is model.backbone.upsamples[-1] and top[1] is model.backbone.upsamples[-2]
    seen = []
    handle = top[0].register_forward_hook(lambda m, a, o: seen.append(a[1].detach().clone()))  # the args as used
    with torch.no_grad():
        plain = model.features(x)
        with top_skips_dropped(model.backbone, 2, 1.0):  # every sample loses both
            gone = model.features(x)
        with top_skips_dropped(model.backbone, 2, 0.5, torch.Generator().manual_seed(0)):
            model.features(torch.cat([x, x, x, x]))
        again = model.features(x)
    handle.remove()
    assert seen[0].abs().sum() > 0 and seen[1].abs().sum() == 0
    half = seen[2].flatten(1).abs().sum(1) == 0
    assert 0 < int(half.sum()) < len(half)  # some samples lost the skip, some kept it
    assert not torch.allclose(plain, gone) and torch.equal(plain, again)  # the hooks are gone after the block
    model = tiny(("recon",))
    out = pretrain_steps(model, [scan()] * 3, "gaussian", (0.2,), 0.01, seed=3, pretext="denoise+skipdrop")
    assert out["steps"] == 3 and out["loss"] > 0
    assert not any(b._forward_pre_hooks for b in top_skip_blocks(model.backbone, 2))


def test_swinunetr_top_skips_are_its_first_decoders():
    from monai.networks.nets import SwinUNETR

    from uharmony.model.task_heads import top_skip_blocks

    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=3)
    assert top_skip_blocks(net, 2) == [net.decoder1, net.decoder2]


def test_denoising_is_scored_against_a_noise_free_reference_when_there_is_one():
    from uharmony.umsrep.training import denoise_scores

    torch.manual_seed(0)
    clean = torch.zeros(4, 16, 16, 16)
    grid = torch.linspace(0, 3.14, 12)
    clean[:, 2:-2, 2:-2, 2:-2] = 1 + torch.sin(grid)[:, None, None] * torch.cos(grid)[None, :, None]
    image = torch.where(clean != 0, clean + 0.1 * torch.randn_like(clean), clean)
    item = {"image": image, "present": torch.ones(4, dtype=torch.bool), "floor": torch.full((4,), -1.0)}
    plain = denoise_scores(tiny(("recon",)), [item], "rician", (0.1, 0.2), 16, seed=1)
    assert not any(k.startswith("psnr-clean") for k in plain) and "intrinsic-noise" not in plain
    item.update(reference=clean, **{"has-reference": torch.ones(4, dtype=torch.bool)})
    scores = denoise_scores(tiny(("recon",)), [item], "rician", (0.1, 0.2), 16, seed=1)
    assert abs(scores["intrinsic-noise"] - 0.1) < 0.01
    # the zero-initialized residual head returns its input: no gain against either reference
    assert scores["psnr-clean-denoised-s"] == pytest.approx(scores["psnr-clean-noisy-s"])
    assert scores["psnr-clean-noisy-1"] < scores["psnr-clean-noisy-0"] < scores["psnr-clean-noisy-s"]
    assert {k: v for k, v in scores.items() if k in plain} == pytest.approx(plain)


def test_rician_noise_sits_on_the_given_magnitude_floor():
    x = torch.full((1, 1, 8, 8, 8), 0.5)
    mask = torch.ones_like(x, dtype=torch.bool)
    floor = torch.tensor([[0.5]])  # every voxel at the floor: magnitude 0, so the noise only raises it
    noisy = corrupt(x, mask, "rician", 0.3, torch.Generator().manual_seed(0), floor)
    assert float(noisy.min()) >= 0.5 and float(noisy.mean()) > 0.5 + 0.2  # the Rician bias at zero signal


def test_a_model_with_an_earlier_presence_head_is_refused_by_name():
    model = tiny(("presence",))
    assert model.spec["presence_head"] == 2
    rebuilt = model_from_spec(model.spec)
    assert rebuilt.spec == model.spec
    old = {k: v for k, v in model.spec.items() if k != "presence_head"}  # saved before the head changed
    with pytest.raises(ValueError, match="presence head is of an earlier version"):
        model_from_spec(old)
    plain = dict(tiny(("recon",)).spec)
    assert "presence_head" not in plain and model_from_spec(plain).spec == plain

"""The pretext probe's statistics and its page (the training part runs in the probe command itself)."""

import torch

from simulation.umsrep_bench.probe import linear_probe, page


def test_the_linear_probe_separates_what_is_separable_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(200, generator=gen) < 0.7).float()
    x = torch.randn(200, 6, generator=gen)
    informative = x.clone()
    informative[:, 0] += 3 * y
    good, blind = linear_probe(informative, y), linear_probe(x, y)
    assert good["auroc"] > 0.95 and good["accuracy"] > 0.9
    assert 0.35 < blind["auroc"] < 0.65 and blind["accuracy"] <= good["accuracy"]
    assert good["majority"] == blind["majority"] == max(float(y.mean()), 1 - float(y.mean()))


def test_the_page_applies_the_registered_rule():
    rec = [
        {"seed": s, "arm": a, "steps": 320, "auroc": v, "accuracy": 0.7, "majority": 0.7}
        for s in (0, 1, 2)
        for a, v in (("random", 0.6), ("denoise", 0.7), ("denoise+inpaint", 0.76))
    ]
    assert "met: denoise+inpaint is the recommendation (+0.060" in page(rec)
    assert "denoise+skipdrop ≥" not in page(rec)  # an arm not run is not judged
    rec[-1]["auroc"] = 0.70
    assert "not met: no change (+0.040" in page(rec)
    rec += [{"seed": s, "arm": "denoise+skipdrop", "steps": 320, "auroc": 0.8, "accuracy": 0.7, "majority": 0.7}
            for s in (0, 1, 2)]  # fmt: skip
    assert "(denoise+skipdrop ≥ 0.05 AUROC above denoising): met: denoise+skipdrop is the recommendation (+0.100" in (
        page(rec)
    )


def test_the_pooling_rule_compares_the_same_arm_read_two_ways():
    rec = [
        {"seed": s, "arm": "denoise", "steps": 320, "auroc": v, "accuracy": 0.7, "majority": 0.7, **extra}
        for s in (0, 1, 2)
        for v, extra in ((0.70, {}), (0.80, {"pool": "multiscale"}))
    ]
    text = page(rec)
    assert "| denoise, every scale | 0, 1, 2 | 320 | 80.0" in text and "| denoise | 0, 1, 2 | 320 | 70.0" in text
    assert "met: the presence head gets a multi-scale option (+0.100; per seed +0.100, +0.100, +0.100)" in text
    rec[1]["auroc"] = rec[3]["auroc"] = rec[5]["auroc"] = 0.72
    assert "(denoise read at every scale ≥ 0.05 AUROC above it read at the bottleneck): not met: no change (+0.020" in (
        page(rec)
    )


def test_every_scale_is_read_from_one_forward_pass():
    from simulation.umsrep_bench.probe import _features
    from uharmony.federation.config import RunConfig

    cfg = RunConfig.from_flwr({"patch-size": 16, "filters": "8,16,32", "phase": "pretrain"})
    model = cfg.build_model(2)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(4, 20, 20, 20, generator=gen)
    label = torch.zeros(3, 20, 20, 20)
    label[:, 6:12, 6:12, 6:12] = 1
    item = {"image": image, "label": label, "present": torch.ones(4)}
    one, y1, cases = _features(model, [item, item], 16, 0, 4)
    every, y2, _ = _features(model, [item, item], 16, 0, 4, pool="multiscale")
    assert cases.tolist() == [0] * 4 + [1] * 4  # each patch's case
    one, every, y1, y2 = one[:4], every[:4], y1[:4], y2[:4]
    assert one.shape == (4, 2 * 32) and every.shape == (4, 2 * (8 + 16 + 32))
    assert torch.equal(y1, y2)  # the same patches
    assert torch.allclose(every[:, 8 + 16 : 8 + 16 + 32], one[:, :32])  # the bottleneck's means are among them


def test_the_pooling_confirmation_is_decided_by_its_interval_on_the_fresh_seeds():
    rec = []
    for s in range(10, 20):
        gain = 0.10 if s % 2 else 0.02
        rec += [{"seed": s, "arm": "denoise", "steps": 320, "auroc": 0.7, "accuracy": 0.7, "majority": 0.7},
                {"seed": s, "arm": "denoise", "steps": 320, "auroc": 0.7 + gain, "accuracy": 0.7, "majority": 0.7,
                 "pool": "multiscale"}]  # fmt: skip
    text = page(rec)
    assert (
        "mean ≥ +0.05 AUROC with the 95 % interval above 0): met: multiscale is the default (+0.060 [+0.030, +0.090]"
        in (text)
    )
    for r in rec:
        if r.get("pool") and r["seed"] % 2:
            r["auroc"] = 0.7 + 0.06
    assert "not met (+0.040 [" in page(rec)
    assert "Confirmation" not in page(rec[:-2])  # a seed missing: not decided


def test_held_out_cases_leave_no_patch_of_theirs_in_training_and_a_narrower_readout_is_compared_alike(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    groups = torch.arange(30).repeat_interleave(8)  # 30 cases x 8 patches
    y = (groups % 3 == 0).float()  # presence is a property of the case
    x = 0.5 * torch.randn(240, 60, generator=gen)
    x += 3 * torch.randn(30, 60, generator=gen)[groups]  # each case's own (uninformative) signature
    # patch folds let the probe memorize the cases' signatures; case folds cannot
    leaky, honest = linear_probe(x, y, l2=1e-4), linear_probe(x, y, l2=1e-4, groups=groups)
    assert leaky["auroc"] > 0.95 and honest["auroc"] < 0.7
    seen = []
    real_lbfgs = torch.optim.LBFGS

    def spy(params, **kw):
        seen.append(params[0].shape[0])
        return real_lbfgs(params, **kw)

    monkeypatch.setattr(torch.optim, "LBFGS", spy)
    linear_probe(x, y, groups=groups, dims=5)
    assert seen == [5] * 5  # every fold's readout on 5 components


def test_the_robustness_line_reads_the_case_folds_at_equal_width():
    rec = []
    for s in range(10, 20):
        for pool, v in (("bottleneck", 0.70), ("multiscale", 0.78 + 0.01 * (s % 2))):
            r = {"seed": s, "arm": "denoise", "steps": 320, "auroc": v, "accuracy": 0.7, "majority": 0.7}
            r |= {"folds": "case", "dims": 128} | ({"pool": pool} if pool == "multiscale" else {})
            rec.append(r)
    text = page(rec)
    assert "| denoise, every scale, cases held out, 128 components | 10, 11" in text
    assert (
        "Robustness of the pooling decision (cases held out, 128 components; " in text and ": holds (+0.085 [" in text
    )
    assert "Confirmation on the fresh seeds" not in text  # the registered readout's rules read only its records

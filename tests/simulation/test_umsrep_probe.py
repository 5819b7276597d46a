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

"""How much does phase P's denoiser gain against a noise-free reference? (issue 34, item 2)

    python -m simulation.umsrep_bench.denoise_probe                        # seeds 0 1 2 -> runs/umsrep-denoise
    python -m simulation.umsrep_bench.denoise_probe --steps 1280 --page docs/umsrep-denoise.md

Central phase P (as ``probe.py``: the bench's S1 federation, batches from the sites in turn, lr 2e-3, Rician
noise at 0.1/0.2/0.3 brain SD on each scan's magnitude floor) on the federation generated with its noise-free
references (``synth-reference``: the scans are the same), then each site's held-out validation scans scored by
``uharmony.umsrep.training.denoise_scores``: PSNR against the reference at each added level and for the scan
as acquired, PSNR against the scan itself (the old measure) beside its ceiling 10 log10(1 + sigma^2/sigma0^2),
and the intrinsic noise sigma0. Issue 34's targets: a gain of at least 3 dB at sigma 0.2 at every site against
the reference, and no loss at sigma 0.1. One JSONL record per (seed, pretext, steps, site), written as made.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from uharmony.files import append_jsonl, read_jsonl

from ..kit.page import publish
from .probe import central_phase_p


def measure(seed: int, pretext: str, steps: int) -> list[dict]:
    from uharmony.umsrep.training import denoise_scores

    from ..kit.machine import machine

    t0 = time.time()
    cfg, sites, model, loss = central_phase_p(seed, pretext, steps, reference=True)
    out = []
    for data in sites:
        scores = denoise_scores(model, data.val, cfg.noise, cfg.noise_levels, cfg.patch_size, seed)
        out.append({"seed": seed, "pretext": pretext, "steps": steps, "site": data.site.name, "levels":
                    list(cfg.noise_levels), "val_cases": len(data.val), "train_loss": loss, **scores,
                    "machine": machine(), "seconds": round(time.time() - t0, 1)})  # fmt: skip
    return out


def _gain(r: dict, kind: str, level) -> float:
    return r[f"psnr-{kind}denoised-{level}"] - r[f"psnr-{kind}noisy-{level}"]


def page(records: list[dict]) -> str:
    lines = [
        "# UMS-Rep denoising against the noise-free reference (`python -m simulation.umsrep_bench.denoise_probe`)",
        "",
        "Central phase P on the bench's S1 federation, then each site's held-out validation scans; gains in dB "
        "(denoised − noisy PSNR), mean over seeds. Design: the module's docstring.",
        "",
        "| pretext | steps | site | seeds | σ₀ (brain SD) | vs reference: σ 0.1 | σ 0.2 | σ 0.3 | "
        "the scan as acquired | vs the scan itself: σ 0.2 | its ceiling at σ 0.2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["pretext"], r["steps"], r["site"]) for r in records}, key=lambda k: (k[0], k[1], int(k[2])))
    verdicts = {}
    for pretext, steps, site in keys:
        rs = [r for r in records if (r["pretext"], r["steps"], r["site"]) == (pretext, steps, site)]
        mid = len(rs[0]["levels"]) // 2
        sigma = rs[0]["levels"][mid]
        s0 = statistics.fmean(r["intrinsic-noise"] for r in rs)
        ref = [statistics.fmean(_gain(r, "clean-", i) for r in rs) for i in range(len(rs[0]["levels"]))]
        own = statistics.fmean(_gain(r, "clean-", "s") for r in rs)
        scan = statistics.fmean(_gain(r, "", mid) for r in rs)
        ceiling = 10 * math.log10(1 + sigma**2 / s0**2)
        lines.append(
            f"| {pretext} | {steps} | {site} | {len(rs)} | {s0:.2f} | "
            + " | ".join(f"{g:+.2f}" for g in ref)
            + f" | {own:+.2f} | {scan:+.2f} | {ceiling:.2f} |"
        )
        verdicts.setdefault((pretext, steps), []).append((site, ref[mid], ref[0]))
    lines.append("")
    for (pretext, steps), sites in verdicts.items():
        worst = min(sites, key=lambda x: x[1])
        lowest = min(sites, key=lambda x: x[2])
        lines.append(
            f"- {pretext}, {steps} steps: ≥ 3 dB at σ 0.2 at every site against the reference: "
            f"{'met' if worst[1] >= 3 else '**missed**'} (lowest {worst[1]:+.2f} dB, site {worst[0]}); no loss at "
            f"σ 0.1: {'met' if lowest[2] >= 0 else '**missed**'} (lowest {lowest[2]:+.2f} dB, site {lowest[0]})"
        )
    machines = sorted({r["machine"] for r in records})
    lines += ["", f"Machine: {'; '.join(machines)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="umsrep-denoise-probe", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=320)
    p.add_argument("--pretext", default="denoise", choices=("denoise", "denoise+inpaint"))
    p.add_argument("--out", type=Path, default=Path("runs/umsrep-denoise"))
    p.add_argument("--page", type=Path, default=None)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "denoise.jsonl"
    records = read_jsonl(path)
    done = {(r["seed"], r["pretext"], r["steps"]) for r in records}
    for seed in a.seeds:
        if (seed, a.pretext, a.steps) in done:
            continue
        for rec in measure(seed, a.pretext, a.steps):
            append_jsonl(path, rec)
            records.append(rec)
        print(f"[denoise-probe] seed {seed} {a.pretext} {a.steps} steps: done", flush=True)
    return publish(page(records), a.page)


if __name__ == "__main__":
    sys.exit(main())

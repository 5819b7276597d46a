"""The page's pilot sections: learning rate, plateau, bf16 parity, issue 30's variants."""

from __future__ import annotations

import math
import statistics

from simulation.kit.stats import interval

from .design import (
    DATASET_FREE,
    LRS,
    METHODS,
    VARIANTS,
)
from .report_common import NAMES, pct, seed_values, trains, verdict


def pilot_section(records, size) -> list[str]:
    out = ["## Pilots (seeds 5 and 7; never the confirmatory seeds)", ""]
    lr_jobs = trains(records, "pilot-lr")
    if not lr_jobs:
        return out + ["Not run yet (`uharmony-evidence --stage pilot-lr`).", ""]
    out += [
        "**Learning rate** (S3, seed 5, dataset-free all-cells Dice; the rule: the highest, ties 5e-3):",
        "",
        "| method | " + " | ".join(f"{lr:g}" for lr in LRS) + " | chosen |",
        "|---|" + "---|" * (len(LRS) + 1),
    ]
    chosen = {}
    try:
        from .cli import choose_lr

        chosen = choose_lr(records)
    except SystemExit:
        pass
    for m in METHODS["S3"]:
        row = [pct(seed_values(records, "pilot-lr", "S3", m, DATASET_FREE[m], "all", {"lr": lr}).get(5)) for lr in LRS]
        out.append(f"| {NAMES[m]} | " + " | ".join(row) + f" | {chosen.get(m, '–')} |")
    out.append("")
    plateau = trains(records, "pilot-plateau")
    if plateau:
        out += [
            f"**Plateau** (S3, seed 5, at the chosen rates: {size.rounds} vs {2 * size.rounds} rounds, dataset-free "
            "all-cells Dice; the rule: doubling moves no method by more than 2 DSC):",
            "",
            f"| method | {size.rounds} rounds | {2 * size.rounds} rounds | change | at its plateau |",
            "|---|---|---|---|---|",
        ]
        for m in METHODS["S3"]:
            base = seed_values(records, "pilot-lr", "S3", m, DATASET_FREE[m], "all", {"lr": chosen.get(m, 5e-3)})
            long = seed_values(records, "pilot-plateau", "S3", m, DATASET_FREE[m], "all")
            if 5 in base and 5 in long:
                d = long[5] - base[5]
                out.append(
                    f"| {NAMES[m]} | {pct(base[5])} | {pct(long[5])} | {100 * d:+.1f} | {_yes(abs(d) <= 0.02)} |"
                )
        out.append("")
    parity = trains(records, "pilot-parity")
    if parity:
        diffs, rows = [], []
        for m in ("fedavg", "uharmony"):
            for s in (5, 7):
                fp32 = seed_values(records, "pilot-parity", "S3", m, DATASET_FREE[m], "all", {"precision": "fp32"})
                bf16 = seed_values(records, "pilot-parity", "S3", m, DATASET_FREE[m], "all", {"precision": "bf16"})
                if s == 5:
                    bf16 = seed_values(records, "pilot-lr", "S3", m, DATASET_FREE[m], "all", {"lr": 5e-3})
                if s in fp32 and s in bf16:
                    diffs.append(fp32[s] - bf16[s])
                    rows.append(f"| {NAMES[m]} | {s} | {pct(fp32[s])} | {pct(bf16[s])} | {100 * diffs[-1]:+.1f} |")
        c = interval(diffs)
        out += [
            "**bf16 parity** (S3, lr 5e-3, dataset-free all-cells Dice; the rule: |mean fp32 − bf16| ≤ 1 DSC):",
            "",
            "| method | seed | fp32 | bf16 | fp32 − bf16 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Mean fp32 − bf16 over {len(diffs)} pairs: {c.text() if c else '–'}"
            + (f"; the rule is {verdict(abs(c.mean) <= 0.01)}." if c else "."),
            "",
        ]
    return out


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def method_pilot_section(records) -> list[str]:
    """Issue 30's variants on their pilot seeds (the rule: preregistration.md, "Amendment: method variants")."""
    jobs = trains(records, "pilot-method")
    if not jobs:
        return []
    from .design import METHOD_PILOT_SEEDS

    seeds = METHOD_PILOT_SEEDS
    out = [
        "## U-Harmony variants: pilot (issue 30; seeds 6 and 8, never the confirmatory seeds)",
        "",
        "| variant | " + " | ".join(f"S3 conflict, seed {s}" for s in seeds) + " | S3 conflict, mean | S3 all, mean "
        f"| S0 all, seed {seeds[0]} |",
        "|---|" + "---|" * (len(seeds) + 3),
    ]
    for m in ("uharmony", *VARIANTS):
        c = seed_values(records, "pilot-method", "S3", m, DATASET_FREE[m], "conflict")
        a = seed_values(records, "pilot-method", "S3", m, DATASET_FREE[m], "all")
        z = seed_values(records, "pilot-method", "S0", m, DATASET_FREE[m], "all")
        mean = statistics.fmean(c.values()) if c else math.nan
        amean = statistics.fmean(a.values()) if a else math.nan
        cols = " | ".join(pct(c.get(s)) for s in seeds)
        out.append(f"| {m} | {cols} | {pct(mean)} | {pct(amean)} | {pct(z.get(seeds[0]))} |")
    try:
        from .cli import choose_variant

        out += ["", f"By the rule, kept: **{choose_variant(records) or 'none'}**."]
    except SystemExit as exc:
        out += ["", f"Incomplete: {exc}"]
    return out + [""]

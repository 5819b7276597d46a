"""docs/umsrep.md from the UMS-Rep evidence's ``results.jsonl``: each target stated as met or not, with its
number; paired differences over seeds with 95 % intervals ("not significant" when the interval holds 0)."""

from __future__ import annotations

import statistics
from pathlib import Path

from simulation.kit.page import ms
from simulation.kit.stats import interval, paired, signed_rank

from .jobs import MATCHED
from .report_denoising import denoising_section
from .report_strategies import final_dice, strategies_section

TARGET_SHARE = 0.9  # "the target Dice": 90 % of scratch's final Dice at the same seed and label fraction
COLLAPSE = 0.5  # a run whose final Dice is below this failed (design v2: its rate is reported beside the mean)
ABSOLUTE = (0.80, 0.75)  # design v2: 25 % labelled, pretrained on all, fixed population: mean >= 0.80, lower >= 0.75


def _fixed(rec: dict) -> float | None:
    """The fixed population (design v2): every site's validation scans, the label-free sites' included, scored
    dataset-free after phase F; each site's mean over the regions it annotates, then the mean over sites."""
    sites = [s for s in (rec.get("fixed") or {}).values() if s.get("entries") == "saved"]  # (else: left out)
    per_site = [[v for v in s["cells"].values() if v is not None] for s in sites]
    means = [sum(v) / len(v) for v in per_site if v]
    return sum(means) / len(means) if means else None


POPULATIONS = {  # name: (the final Dice of a record, what it averages)
    "labelled": (final_dice, "mean gated Dice over the labelled sites' validation scans"),
    "fixed": (_fixed, "mean dataset-free Dice over every site's validation scans, label-free sites' included"),
}


def _rounds_to(rec: dict, target: float) -> int | None:
    for rnd, dice in sorted(((int(k), v) for k, v in (rec.get("curve") or {}).items())):
        if dice >= target:
            return rnd
    return None


def _finetunes(results, plan="full", tasks=""):
    return [r for r in results if r.get("kind") == "finetune" and r["plan"] == plan and r["tasks"] == tasks]


def efficiency_table(results: list[dict], population: str = "labelled") -> dict[float, dict[str, dict[int, float]]]:
    """fraction -> arm -> seed -> the population's final Dice (full fine-tuning)."""
    value = POPULATIONS[population][0]
    table: dict[float, dict[str, dict[int, float]]] = {}
    for r in _finetunes(results):
        v = value(r)
        if v is not None:
            table.setdefault(r["fraction"], {}).setdefault(r["arm"], {})[r["seed"]] = v
    return table


def label_efficiency_section(results: list[dict], population: str = "labelled") -> tuple[list[str], dict]:
    fine = _finetunes(results)
    table = efficiency_table(results, population)
    if not table:
        return [], {}
    matched = any(MATCHED in arms for arms in table.values())
    lines = [
        f"## Label efficiency{', fixed population' if population == 'fixed' else ''} (phase F: full fine-tuning, "
        f"U-Harmony; {POPULATIONS[population][1]}, ×100)",
        "",
        "| labelled sites | scratch | pretrained on all sites | pretrained on labelled sites only | "
        + ("scratch, compute-matched | " if matched else "")
        + f"seeds | runs below {COLLAPSE:.0%} Dice (scratch / all) |",
        "|---|---|---|---|" + ("---|" if matched else "") + "---|---|",
    ]
    for f in sorted(table):
        arms = table[f]
        n = max(len(v) for v in arms.values())
        labelled = next((len(r["labelled"]) for r in fine if r["fraction"] == f), "?")
        lab = arms.get("labelled") if f < 1 else arms.get("all")
        collapsed = " / ".join(str(sum(v < COLLAPSE for v in arms.get(a, {}).values())) for a in ("scratch", "all"))
        lines.append(
            f"| {f:.1%} ({labelled} of 5) | {ms(list(arms.get('scratch', {}).values()))} | "
            f"{ms(list(arms.get('all', {}).values()))} | {ms(list((lab or {}).values()))} | "
            + (f"{ms(list(arms.get(MATCHED, {}).values()))} | " if matched else "")
            + f"{n} | {collapsed} |"
        )
    lines.append("")
    if population == "fixed":
        out = sum(s.get("entries") != "saved" for r in fine for s in (r.get("fixed") or {}).values())
        lines += [f"Site scorings left out (the site kept no entries of its run): {out}.", ""]
    verdicts = {}
    for f in sorted(table):
        arms = table[f]
        for a, b, what in (
            ("all", "scratch", "pretrained on all − scratch"),
            ("all", "labelled", "all − labelled only"),
            ("all", MATCHED, "all − compute-matched scratch"),
        ):
            if a in arms and b in arms:
                d = paired(arms[a], arms[b])
                if d is not None:
                    rank = signed_rank(arms[a], arms[b])
                    extra = f"; median {rank['median'] * 100:+.1f}, signed-rank p = {rank['p']:.3f}" if rank else ""
                    lines.append(f"- {f:.1%} labelled, {what}: {d.text(unit='DSC')} ({d.n} seeds{extra})")
                    verdicts[(f, a, b)] = d
    lines.append("")
    return lines, verdicts


def targets_section(verdicts: dict, cost_lines: list[str], fixed: dict | None = None) -> list[str]:
    """``verdicts``: the label-efficiency contrasts of the primary population (design v2: the fixed one, when
    its records have it; before: the labelled sites'); ``fixed``: the fixed population's table, for the
    absolute target."""
    lines = ["## Targets", ""]
    on = " (fixed population)" if fixed else ""

    def state(key, threshold, text):
        d = verdicts.get(key)
        if d is None:
            return f"- {text}: not measured"
        # a negative threshold is a non-inferiority margin: decided by the interval's lower bound
        ok = d.low * 100 >= threshold if threshold < 0 else d.mean * 100 >= threshold and d.significant and d.low > 0
        return f"- {text}: {'met' if ok else '**missed**'} ({d.text(unit='DSC')})"

    lines.append(
        state((0.25, "all", "scratch"), 3, f"25 % labelled{on}: pretrained on all ≥ scratch + 3 DSC, interval above 0")
    )
    lines.append(
        state((0.25, "all", "labelled"), 1, f"25 % labelled{on}: label-free sites' participation adds ≥ 1 DSC")
    )
    lines.append(state((1.0, "all", "scratch"), -1, f"100 % labelled{on}: no harm (lower bound ≥ scratch − 1 DSC)"))
    if (0.25, "all", MATCHED) in verdicts:
        lines.append(
            state(
                (0.25, "all", MATCHED),
                -1,
                f"25 % labelled{on}: pretrained on all ≥ compute-matched scratch (lower bound ≥ −1)",
            )
        )
    if fixed:
        mean, low = ABSOLUTE
        text = f"25 % labelled (fixed population): pretrained on all ≥ {mean:.0%} Dice, lower bound ≥ {low:.0%}"
        c = interval(list(fixed.get(0.25, {}).get("all", {}).values()))
        if c is None or c.n < 2:
            lines.append(f"- {text}: not measured")
        else:
            ok = c.mean >= mean and c.low >= low
            lines.append(
                f"- {text}: {'met' if ok else '**missed**'} ({c.mean * 100:.1f} [{c.low * 100:.1f}, "
                f"{c.high * 100:.1f}], {c.n} seeds)"
            )
    return lines + cost_lines + [""]


def cost_section(results: list[dict], size: dict) -> tuple[list[str], list[str]]:
    """Rounds to the target and what they cost, in site-steps (exact: sites x rounds x local steps) and in
    measured site-seconds (each site's training time; inflated where other jobs shared the cores)."""
    fine = {(r["seed"], r["fraction"], r["arm"]): r for r in _finetunes(results)}
    pre = {(r["seed"], r["sites"]): r for r in results if r.get("kind") == "pretrain"}
    steps, p_steps = size.get("local_steps") or 1, size.get("pretrain_steps") or 1
    lines = [
        "## Rounds and cost to the target Dice",
        "",
        f"Target: {TARGET_SHARE:.0%} of scratch's final Dice at the same seed and fraction (evaluated every "
        f"{size.get('eval_every')} rounds). Cost in site-steps (sites × rounds × local steps; a denoising step "
        "costs about two thirds of a segmentation step here) and, in brackets, measured site-seconds (each "
        "site's training time; inflated unevenly where other jobs shared the two cores). Phase F counts up to "
        "the target round; phase P whole. Sunk: phase P not counted; spent: counted. Break-even: how many "
        "fine-tunings like this one repay phase P (in site-steps).",
        "",
        "| seed | labelled | scratch rounds | pretrained rounds | ratio | scratch | pretrained (sunk) | "
        "+ phase P (spent) | break-even |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for (seed, f, arm), r in sorted(fine.items()):
        if arm != "all" or (seed, f, "scratch") not in fine or final_dice(fine[(seed, f, "scratch")]) is None:
            continue
        s = fine[(seed, f, "scratch")]
        target = TARGET_SHARE * final_dice(s)
        total = max(int(k) for k in s["curve"])
        rs, rp = _rounds_to(s, target) or total, _rounds_to(r, target)
        ratios.append((rp or total) / rs)  # not reached: at least the run's length (a lower bound)
        cs = s["sites_per_round"] * rs * steps
        cp = r["sites_per_round"] * rp * steps if rp else None
        p = pre.get((seed, "all"))
        spent = len(p["denoise"]) * p["rounds"] * p_steps if p else None
        secs_s = s["site_seconds"] * rs / total
        secs_p = r["site_seconds"] * rp / total if rp else None
        cells = [
            str(seed),
            f"{f:.1%}",
            str(rs),
            str(rp or "not reached"),
            f"{(rp or total) / rs:.2f}" + ("" if rp else "+"),
            f"{cs} ({secs_s:.0f} s)",
            "-" if cp is None else f"{cp} ({secs_p:.0f} s)",
            "-" if cp is None or spent is None else f"{cp + spent} ({secs_p + p['site_seconds']:.0f} s)",
            f"{spent / (cs - cp):.0f}" if cp is not None and spent and cs > cp else "never",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not ratios:
        return lines + [""], ["- Phase-F rounds to the target: not measured"]
    mean, median = statistics.fmean(ratios), statistics.median(ratios)
    verdict = (
        f"- Phase-F rounds to the target ≤ 50 % of scratch's: {'met' if mean <= 0.5 else '**missed**'} (ratio "
        f"mean {mean:.2f}, median {median:.2f} over {len(ratios)} seed × fraction pairs; a pretrained run that never "
        "reached the target counts as the run's length)"
    )
    return lines + [""], [verdict]


def unseen_section(results: list[dict]) -> list[str]:
    rows = [r for r in results if r.get("kind") == "unseen"]
    lines = [
        "## Leave one site out, rotated (the held-out hospital segments dataset-free, statistics calibrated on its "
        "own scans)",
        "",
        "Phase F on the other sites, all labelled. `all`: phase P ran on every site, the held-out one included as a "
        "label-free participant; `scratch`: no phase P. Mean Dice ×100 over the regions it annotates.",
        "",
        "| held-out site | seed | scratch | pretrained (its scans in phase P) |",
        "|---|---|---|---|",
    ]
    if not rows:
        return lines + ["| not run | | | |", ""]
    score: dict[str, dict[tuple, float]] = {}
    for r in rows:
        values = [v for v in r["calibrated"].values() if v is not None]
        if values:
            score.setdefault(r["arm"], {})[(r["held_out"], r["seed"])] = statistics.fmean(values)
    for key in sorted(set(score.get("scratch", {})) | set(score.get("all", {}))):
        cells = [f"{score[a][key] * 100:.1f}" if key in score.get(a, {}) else "-" for a in ("scratch", "all")]
        lines.append(f"| {key[0]} | {key[1]} | {cells[0]} | {cells[1]} |")
    d = paired(score.get("all", {}), score.get("scratch", {}))  # paired by (held-out site, seed)
    if d is not None:
        lines += ["", f"- pretrained − scratch on the unseen site, over {d.n} rotations: {d.text(unit='DSC')}"]
    return lines + [""]


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = any(r.get("fixed") for r in _finetunes(results))  # design v2's population when its records have it
    value = POPULATIONS["fixed" if fixed else "labelled"][0]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, color in (("scratch", "tab:gray"), ("all", "tab:blue"), ("labelled", "tab:orange")):
        points: dict[float, list[float]] = {}
        for r in _finetunes(results):
            if r["arm"] == arm and value(r) is not None:
                points.setdefault(r["fraction"], []).append(value(r) * 100)
        if points:
            xs = sorted(points)
            ax.errorbar(
                [x * 100 for x in xs],
                [statistics.fmean(points[x]) for x in xs],
                yerr=[statistics.stdev(points[x]) if len(points[x]) > 1 else 0 for x in xs],
                label={"all": "pretrained on all sites", "labelled": "pretrained on labelled sites"}.get(arm, arm),
                color=color,
                marker="o",
                capsize=3,
            )
    ax.set_xlabel("sites labelled (%)")
    ax.set_ylabel("Dice ×100 (" + ("every site, dataset-free" if fixed else "gated, labelled sites") + ")")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _tuple(value):
    """A size's sequence as the page has always printed it (a size dict read back from JSON holds lists)."""
    return tuple(value) if isinstance(value, list) else value


def write_report(results: list[dict], meta: dict, doc: Path, out: Path | None = None) -> Path:
    size = meta.get("size", {})
    png = doc.parent / "umsrep" / "label_efficiency.png"
    plot(results, png)
    den = denoising_section(results, meta)
    eff, verdicts = label_efficiency_section(results)
    fixed_eff, fixed_verdicts = label_efficiency_section(results, "fixed")
    fixed = efficiency_table(results, "fixed") if fixed_verdicts else None
    cost, cost_verdict = cost_section(results, size)
    strat, strat_verdict = strategies_section(results)
    lines = [
        "# UMS-Rep in the federation: evidence",
        "",
        "Written by `uharmony-umsrep` (`simulation/umsrep_bench/`); rerun it to reproduce every number here. "
        "What the method is and what is ours: docs/method.md (UMS-Rep section).",
        "",
        f"- Machine: {meta.get('machine', '?')}; software: {meta.get('software', '?')}.",
        f"- Size `{size.get('name')}`: scenario {size.get('scenario')}, {size.get('cases_per_site')} cases per site, "
        f"{size.get('spacing')} mm, patch {size.get('patch_size')}, DynUNet {size.get('filters')}, U-Harmony; phase P "
        f"{size.get('pretrain_rounds')} rounds × {size.get('pretrain_steps')} steps, phase F {size.get('rounds')} "
        f"rounds × {size.get('local_steps')} steps; seeds {_tuple(size.get('seeds'))} for the paired fractions "
        f"{_tuple(size.get('paired_fractions'))}, seed {(size.get('seeds') or [0])[0]} for "
        f"{_tuple(size.get('curve_fractions'))}; "
        f"{meta.get('seconds', '?')} s wall.",
        "- These parameters were fixed before any result was seen and were not changed after.",
        *[f"- Redone: {r['count']} job(s) matching `{r['jobs']}`: {r['why']}" for r in meta.get("redone", [])],
        "",
        *targets_section(fixed_verdicts or verdicts, cost_verdict + strat_verdict, fixed),
        *den,
        *fixed_eff,
        *eff,
        f"![label efficiency]({png.relative_to(doc.parent)})",
        "",
        *cost,
        *strat,
        *unseen_section(results),
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines) + "\n")
    return doc

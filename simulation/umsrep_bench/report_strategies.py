"""docs/umsrep.md's fine-tuning strategies table (the paper's layout: one row per strategy, one column per task),
its verdicts on the bytes the independent plans send, and the presence target."""

from __future__ import annotations

import statistics

from simulation.kit.page import ms


def final_dice(rec: dict) -> float | None:
    """A record's Dice (or other curve) at its last evaluated round."""
    curve = rec.get("curve") or {}
    return curve[max(curve, key=int)] if curve else None


# what the plans of records made before PLANS_VERSION 2 were (each task then had half the steps where the
# schedule alternated or the heads trained one after the other)
LEGACY_PLANS = {
    "independent": "independent-head (v1: half the steps per task)",
    "independent-decoder": "independent (v1: half the steps per task)",
    "alternating": "alternating (v1: half the steps per task)",
}
STRATEGY_ORDER = ("full", "joint", "alternating", "independent", "independent-head")


def plan_label(r: dict) -> str:
    """The plan a record ran, by today's names (``(v1: ...)`` for the earlier plans)."""
    return r["plan"] if r.get("plans", 1) >= 2 else LEGACY_PLANS.get(r["plan"], r["plan"])


def strategies_section(results: list[dict]) -> tuple[list[str], list[str]]:
    rows = [r for r in results if r.get("kind") == "finetune" and r["tasks"] == "presence"]
    lines = [
        "## Fine-tuning strategies (the paper's layout: one row per strategy, one column per task)",
        "",
        "| strategy | start | segmentation Dice ×100 | presence accuracy ×100 | presence AUROC ×100 | bytes sent "
        "per round and site (% of the model's) | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {(plan_label(r), r["arm"]) for r in rows}
    rank = {p: i for i, p in enumerate(STRATEGY_ORDER)}
    order = sorted(labels, key=lambda k: (k[1] != "scratch", rank.get(k[0].split(" ")[0], 99), k[0]))
    share_of, dice_of, old_plans = {}, {}, set()
    for label, start in order:
        group = [r for r in rows if (plan_label(r), r["arm"]) == (label, start)]
        dice = [final_dice(r) for r in group]
        pres = [v for r in group if (v := final_dice({"curve": r["presence"]})) is not None]
        auroc = [v for r in group if (v := final_dice({"curve": r.get("presence_auroc")})) is not None]
        share = [
            r["bytes_per_round"] / r["sites_per_round"] / r["full_model_bytes"]
            for r in group
            if r["full_model_bytes"] and r["sites_per_round"]
        ]
        base = label.split(" ")[0]
        if not ("(v1" in label and (base, start) in share_of):  # the verdicts: today's plan's, where both exist
            share_of[(base, start)], dice_of[(base, start)] = share, dice
            old_plans |= {base} if "(v1" in label else set()
        name = f"scratch ({label}, no phase P)" if start == "scratch" else label
        untrained = base == "full"  # segmentation loss only: its presence head is as initialized
        lines.append(
            f"| {name} | {start} | {ms(dice)} | {'not trained' if untrained else ms(pres)} | "
            f"{'—' if untrained or not auroc else ms(auroc)} | "
            f"{statistics.fmean(share) * 100 if share else float('nan'):.2f} | {len(group)} |"
        )
    if rows:  # the presence head read the bottleneck before 2026-12-07 (records without the key); every scale since
        said = {"bottleneck": "the pooled bottleneck", "multiscale": "every encoder scale, pooled"}
        pools = sorted({r.get("presence_pool", "bottleneck") for r in rows})
        lines += ["", f"The presence head of these {len(rows)} runs reads {' or '.join(said[p] for p in pools)}."]
    verdicts = []
    head = share_of.get(("independent-head", "all"))
    if head:
        verdicts.append(
            f"- Independent-head fine-tuning sends ≤ 2 % of the model's bytes per round and site: "
            f"{'met' if max(head) <= 0.02 else '**missed**'} ({max(head) * 100:.2f} %)"
        )
    own, joint = dice_of.get(("independent", "all")), dice_of.get(("joint", "all"))
    if own and joint and share_of.get(("independent", "all")):
        gap, sent = 100 * (statistics.fmean(joint) - statistics.fmean(own)), max(share_of[("independent", "all")])
        verdicts.append(
            f"- Independent plan segments (Dice within 10 of joint) while sending ≤ 40 % of the model's bytes: "
            f"{'met' if gap <= 10 and sent <= 0.4 else '**missed**'} (joint − independent {gap:+.1f} DSC, "
            f"{sent * 100:.1f} % of the bytes; {len(own)} seed(s)"
            + ("; the earlier plan: half the steps per task" if "independent" in old_plans else "")
            + ")"
        )
    if not verdicts:
        verdicts.append("- Independent plans' bytes: not measured")
    # issue 34: presence from the pretrained trunk, the joint plan (the paper's for cooperating tasks), every seed
    auroc = [v for r in rows if plan_label(r) == "joint" and r["arm"] == "all"
             if (v := final_dice({"curve": r.get("presence_auroc")})) is not None]  # fmt: skip
    verdicts.append(
        "- Presence from the pretrained trunk (joint plan): AUROC ≥ 0.9: "
        + (
            f"{'met' if statistics.fmean(auroc) >= 0.9 else '**missed**'} ({ms(auroc)}, {len(auroc)} seed(s))"
            if auroc
            else "not measured"
        )  # fmt: skip
    )
    return lines + [""], verdicts

"""Figures of a join experiment from the runs' ``metrics.jsonl``: old sites before / right after the
model was extended / at the end (against a control run the new site never joined), and the new site.

A site's score is the mean Dice over the regions it annotates among the *old* regions (ET, TC, WT), so
that old sites' scores before and after the join are comparable; the new site's regions are also given
one by one, its new class (RC) included.
"""

from __future__ import annotations

from pathlib import Path

from simulation.kit.page import ms
from uharmony.records.runlog import RunLog
from uharmony.vocabulary import REGIONS as OLD_REGIONS


def dice_rows(run_dir: Path) -> list[dict]:
    return [r for r in RunLog(run_dir).records() if "dice" in r]


def site_scores(
    rows: list[dict], rnd: int, mode: str, phase: str | None = None, regions=OLD_REGIONS
) -> dict[str, float]:
    """Per site: mean Dice over its annotated ``regions`` at round ``rnd`` (and evaluation ``phase``)."""
    by_site: dict[str, list[float]] = {}
    for r in rows:
        if r["round"] == rnd and r["mode"] == mode and r.get("phase") == phase and r["region"] in regions:
            by_site.setdefault(r["site"], []).append(r["dice"])
    return {s: sum(v) / len(v) for s, v in by_site.items()}


def region_scores(rows: list[dict], site: str, rnd: int, mode: str, phase: str | None = None) -> dict[str, float]:
    return {
        r["region"]: r["dice"]
        for r in rows
        if r["site"] == site and r["round"] == rnd and r["mode"] == mode and r.get("phase") == phase
    }


def summarize(join_dir: Path, control_dir: Path, join_site: str, join_round: int, rounds: int, seed: int) -> dict:
    """One seed's figures (see module docstring); ``max_change_after_extension`` is the largest change of
    any old site's per-region Dice between the last round before the join and right after extension."""
    jr, cr = dice_rows(join_dir), dice_rows(control_dir)
    before = join_round - 1
    out = {"seed": seed, "join_site": join_site, "join_round": join_round, "rounds": rounds, "modes": {}}
    for mode in ("gated", "oracle"):
        old = {
            "before join": site_scores(jr, before, mode),
            "right after extension": site_scores(jr, before, mode, "after-extension"),
            "after the first joint round": site_scores(jr, join_round, mode),
            "final": site_scores(jr, rounds, mode),
            "final, control (no join)": site_scores(cr, rounds, mode),
        }
        old = {k: {s: v for s, v in d.items() if s != join_site} for k, d in old.items()}
        changes = [
            abs(a["dice"] - b["dice"])
            for a in jr
            for b in jr
            if a["mode"] == b["mode"] == mode
            and a["site"] == b["site"] != join_site
            and a["region"] == b["region"]
            and a["round"] == b["round"] == before
            and a.get("phase") is None
            and b.get("phase") == "after-extension"
        ]
        out["modes"][mode] = {
            "old_sites": old,
            "max_change_after_extension": max(changes) if changes else None,
            "new_site": {
                "before training": region_scores(jr, join_site, before, mode, "after-extension"),
                "final": region_scores(jr, join_site, rounds, mode),
            },
            "curve_join": [[r, _mean(site_scores(jr, r, mode), join_site)] for r in range(1, rounds + 1)],
            "curve_control": [[r, _mean(site_scores(cr, r, mode), join_site)] for r in range(1, rounds + 1)],
            "curve_new_site": [[r, region_scores(jr, join_site, r, mode)] for r in range(join_round, rounds + 1)],
        }
    return out


def _mean(scores: dict[str, float], exclude: str) -> float | None:
    vals = [v for s, v in scores.items() if s != exclude]
    return sum(vals) / len(vals) if vals else None


def plot(summaries: list[dict], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        m = s["modes"]["gated"]
        for key, style in (("curve_join", "-"), ("curve_control", ":")):
            pts = [(r, v) for r, v in m[key] if v is not None]
            axes[0].plot(
                *zip(*pts),
                style,
                marker="o",
                ms=3,
                label=f"seed {s['seed']}, {'site 4 joins' if key == 'curve_join' else 'control: no join'}",
            )
        by_region: dict[str, list] = {}
        for r, regions in m["curve_new_site"]:
            for name, v in regions.items():
                by_region.setdefault(name, []).append((int(r), v))
        for name, pts in sorted(by_region.items()):
            axes[1].plot(*zip(*sorted(pts)), marker="o", ms=3, label=f"seed {s['seed']}, {name}")
    jr = summaries[0]["join_round"]
    for ax in axes:
        ax.axvline(jr - 0.5, color="grey", lw=1)
        ax.set_xlabel("round")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("old sites: mean Dice (gated, dataset-free)", fontsize=9)
    axes[1].set_title(f"new site (joins in round {jr}): Dice per region, gated", fontsize=9)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def markdown(summaries: list[dict], meta: dict, png_rel: str) -> str:
    first = summaries[0]
    sites = sorted(
        {s for x in summaries for s in x["modes"]["gated"]["old_sites"]["before join"]}, key=lambda s: (len(s), s)
    )
    lines = [
        "# A site joins a running federation: new modality, new class, new domain",
        "",
        f"Generated by `{meta['command']}` on {meta['machine']}; seeds {', '.join(str(s['seed']) for s in summaries)}; "
        f"{meta['seconds'] / 60:.1f} min. Do not edit by hand: rerun the command.",
        "",
        f"Setup: the embedded federation with {meta['sites']} sites × {meta['cases_per_site']} cases at "
        f"{meta['spacing']} mm (the seed also generates the data). Sites 1–3 train from round 1. "
        f"Site {first['join_site']} is post-operative: "
        "it brings an ADC contrast and BraTS 2024 labels with the resection cavity (RC), which the model has never "
        f"seen. Its SuperNode comes online in round {first['join_round']}; the server then adds an input stem, an "
        "output class and a domain expert, evaluates every site on the extended model, and training continues. "
        f"{first['rounds']} rounds of {meta['local_steps']} local steps; U-Harmony with the gated head. The control "
        "run is the same run in which the new site never joins.",
        "",
        "Old sites' scores are the mean Dice over the ET / TC / WT regions each annotates, ×100, "
        "mean ± std over seeds.",
        "",
    ]
    for mode, title in (("gated", "dataset-free (gated head)"), ("oracle", "own domain expert (oracle)")):
        lines += [
            f"## Old sites, {title}",
            "",
            "| | " + " | ".join(f"site {s}" for s in sites) + " | mean |",
            "|---|" + "---|" * (len(sites) + 1),
        ]
        for key in first["modes"][mode]["old_sites"]:
            per = [[x["modes"][mode]["old_sites"][key].get(s) for x in summaries] for s in sites]
            means = [_mean(x["modes"][mode]["old_sites"][key], "") for x in summaries]
            label = key if key != "before join" else f"before join (round {first['join_round'] - 1})"
            lines.append(f"| {label} | " + " | ".join(ms(v) for v in per) + f" | **{ms(means)}** |")
        change = [x["modes"][mode]["max_change_after_extension"] for x in summaries]
        lines += [
            "",
            f"Largest change of any old site's per-region Dice right after the extension: "
            f"{max(c for c in change if c is not None):.2e} (tolerance 1e-4).",
            "",
        ]
    lines += [
        "## The new site",
        "",
        "Dice per region ×100 (mean ± std over seeds); RC is the class it brought.",
        "",
        "| | mode | " + " | ".join(_new_regions(summaries)) + " |",
        "|---|---|" + "---|" * len(_new_regions(summaries)),
    ]
    for key in ("before training", "final"):
        for mode in ("gated", "oracle"):
            vals = [[x["modes"][mode]["new_site"][key].get(r) for x in summaries] for r in _new_regions(summaries)]
            lines.append(f"| {key} | {mode} | " + " | ".join(ms(v) for v in vals) + " |")
    lines += ["", f"![old and new sites per round]({png_rel})", ""]
    return "\n".join(lines)


def _new_regions(summaries: list[dict]) -> list[str]:
    return list(dict.fromkeys(r for x in summaries for r in x["modes"]["gated"]["new_site"]["final"]))

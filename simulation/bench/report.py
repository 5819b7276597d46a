"""Turn ``results.jsonl`` into ``results.md`` and PNG plots. Every figure in the page comes from the records.

Scores: a site's score is the mean Dice over the regions it annotates (site 4 of the embedded federation
labels only the whole tumour); a method's score for one seed is the mean over sites; tables give
mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

LABELS = {
    "local": "Local only",
    "centralized": "Centralized (pooled), plain model",
    "centralized-uharmony/oracle": "Centralized U-Harmony, oracle head",
    "centralized-uharmony/gated": "Centralized U-Harmony, gated (joint training)",
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedbn": "FedBN",
    "uharmony/oracle": "U-Harmony, oracle head",
    "uharmony/gated": "U-Harmony, gated (dataset-free)",
}
ORDER = list(LABELS)


def site_score(d: dict) -> float | None:
    vals = [v for v in d.values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def mean_over_sites(per_site: dict) -> float:
    scores = [s for s in (site_score(d) for d in per_site.values()) if s is not None]
    return sum(scores) / len(scores) if scores else float("nan")


def method_rows(records: list[dict], scenario: str | None = None, kind: str = "method") -> dict[str, list[dict]]:
    """{"fedavg": [per-site final dict per seed], "uharmony/gated": [...], ...} of one scenario (all: None)."""
    rows: dict[str, list[dict]] = {}
    for r in records:
        if r["kind"] != kind or (scenario is not None and r.get("scenario") != scenario):
            continue
        for mode in r["modes"]:
            key = f"{r['method']}/{mode}" if len(r["modes"]) > 1 else r["method"]  # a gated head: two modes
            rows.setdefault(key, []).append(
                {
                    "seed": r["seed"],
                    "final": r["final"][mode],
                    "curve": [(c["round"], mean_over_sites(c[mode])) for c in r["curve"]],
                }
            )
    return {k: rows[k] for k in ORDER if k in rows}


def _score(rows: dict, key: str) -> float | None:
    if key not in rows:
        return None
    return statistics.fmean(mean_over_sites(x["final"]) for x in rows[key])


def seed_scores(rows: dict, key: str) -> dict[int, float]:
    """seed -> the method's score (mean over sites) at the last round."""
    return {x["seed"]: mean_over_sites(x["final"]) for x in rows.get(key, [])}


def plot_curves(rows: dict, png: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for key, runs in rows.items():
        rounds = sorted({r for x in runs for r, _ in x["curve"]})
        per = np.array([[dict(x["curve"]).get(r, np.nan) for r in rounds] for x in runs])
        mean, std = np.nanmean(per, 0), np.nanstd(per, 0)
        ax.plot(rounds, mean, marker="o", label=LABELS[key], linestyle="--" if key == "uharmony/oracle" else "-")
        ax.fill_between(rounds, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("round")
    ax.set_ylabel("Dice, mean over sites (annotated regions)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title}: Dice per round, mean ± std over {max(len(r) for r in rows.values())} seeds".lstrip(": "))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_overlays(files: dict[str, Path], png: Path) -> Path | None:
    """Rows: sites; columns: FLAIR, ground truth, then each method's dataset-free prediction; labels in fixed
    colours (``uharmony.records.plots``) with a legend."""
    from uharmony.records.plots import draw_labels, legend_handles, protocol_entries, pyplot

    plt = pyplot()
    data = {m: dict(np.load(f)) for m, f in files.items() if Path(f).exists()}
    if not data:
        return None
    first = next(iter(data.values()))
    sites = sorted({k.split("__")[0] for k in first}, key=lambda s: (len(s), s))
    cols = ["FLAIR", "ground truth", *data]
    fig, axes = plt.subplots(
        len(sites), len(cols), figsize=(2.2 * len(cols), 2.2 * len(sites) + 0.8), squeeze=False, layout="constrained"
    )
    shown = []
    for i, site in enumerate(sites):
        img = first[f"{site}__image"]
        for j, col in enumerate(cols):
            ax = axes[i][j]
            lab = None if j == 0 else first[f"{site}__truth"] if j == 1 else data[col].get(f"{site}__pred")
            draw_labels(ax, img, lab)
            shown += [lab] if lab is not None else []
            if i == 0:
                ax.set_title(LABELS.get(col, col).replace(", gated (dataset-free)", " (gated)"), fontsize=8)
            if j == 0:
                ax.set_ylabel(f"site {site}", fontsize=8)
    fig.suptitle("One validation case per site: FLAIR, the axial slice with the most lesion", fontsize=9)
    present = np.concatenate([np.ravel(x) for x in shown]) if shown else None
    handles = legend_handles(protocol_entries("output", present))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def ratio_text(r: dict) -> str:
    """The Flower-over-in-process time ratio of a ``flower_ratio`` record, in words."""
    if r.get("ratio_after_first") is None:  # one round
        return f"ratio **{r['ratio_median']:.3f}**"
    first, every = r["ratio_after_first"], r["ratio_median"]
    return f"ratio of the medians over the rounds after the first **{first:.3f}** (over all rounds {every:.3f})"

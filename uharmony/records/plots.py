"""Figures a reader looks at: a run's training loss and each site's Dice over the rounds (``dice_per_round.png``),
and label maps drawn over a scan slice, one fixed colour per tissue class with a legend.

Label colours follow the BraTS viewers' convention (necrotic core red, oedema green, enhancing yellow) and keep a
class's colour whatever number a protocol gives it (BraTS 2021 marks enhancing 4, BraTS 2023 3), so that sites
with different labelling conventions can be compared by eye.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CLASS_COLOURS = {
    "necrotic core": "#e41a1c",
    "oedema": "#4daf4a",
    "enhancing": "#ffd92f",
    "resection cavity": "#377eb8",
    "non-enhancing tumour": "#ff7f00",
    "cyst": "#984ea3",
    "whole tumour": "#f781bf",
}
OTHER_COLOUR = "#999999"

# label value -> class, per labelling protocol (uharmony/data/regions.py); "output": what uharmony-segment writes
# and the benchmark's overlays show (uharmony.model.inference.regions_to_brats)
LABEL_CLASSES: dict[str, dict[int, str]] = {
    "output": {1: "necrotic core", 2: "oedema", 4: "enhancing", 3: "resection cavity"},
    "brats2021": {1: "necrotic core", 2: "oedema", 4: "enhancing"},
    "brats2023": {1: "necrotic core", 2: "oedema", 3: "enhancing"},
    "brats2024": {1: "necrotic core", 2: "oedema", 3: "enhancing", 4: "resection cavity"},
    "msd": {1: "oedema", 2: "non-enhancing tumour", 3: "enhancing"},
    "brats-peds": {1: "enhancing", 2: "non-enhancing tumour", 3: "cyst", 4: "oedema"},
    "wt": {2: "whole tumour"},
    "none": {},
}


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- label maps --------------------------------------------------------------------------------------------


def label_entries(labels: np.ndarray, protocol: str = "output") -> list[tuple[int, str, str]]:
    """(value, name, colour) of each non-zero label value in ``labels``, in the protocol's order."""
    classes = LABEL_CLASSES.get(protocol, {})
    present = {int(v) for v in np.unique(np.asarray(labels)) if v != 0}
    order = [v for v in classes if v in present] + sorted(present - set(classes))
    return [(v, classes.get(v, f"label {v}"), CLASS_COLOURS.get(classes.get(v, ""), OTHER_COLOUR)) for v in order]


def label_rgba(labels: np.ndarray, protocol: str = "output", alpha: float = 0.6) -> np.ndarray:
    """An RGBA image of a 2-D label map: each class in its colour, background transparent."""
    from matplotlib.colors import to_rgba

    labels = np.asarray(labels)
    out = np.zeros((*labels.shape, 4))
    for value, _, colour in label_entries(labels, protocol):
        out[labels == value] = to_rgba(colour, alpha)
    return out


OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def orientation_marks(ax, codes: tuple[str, str]) -> None:
    """Letters at the edges of a slice drawn by ``draw_labels``: ``codes`` are the directions (nibabel's
    ``aff2axcodes``) in which the slice's first and second voxel axes increase. After np.rot90 the first axis runs
    left to right and the second bottom to top."""
    first, second = codes
    style = dict(transform=ax.transAxes, color="yellow", fontsize=9, fontweight="bold", ha="center", va="center")
    for text, x, y in (
        (OPPOSITE[first], 0.04, 0.5),
        (first, 0.96, 0.5),
        (second, 0.5, 0.96),
        (OPPOSITE[second], 0.5, 0.04),
    ):
        ax.text(x, y, text, **style)


def draw_labels(
    ax,
    image: np.ndarray | None,
    labels: np.ndarray | None,
    protocol: str = "output",
    alpha=0.6,
    codes: tuple[str, str] | None = None,
):
    """Draw a 2-D slice (grey) and its label map (discrete colours) on ``ax``, turned upright (np.rot90), with the
    patient's directions at its edges when ``codes`` (see ``orientation_marks``) are given; returns the (value,
    name, colour) entries drawn, for a legend."""
    if codes is not None:
        orientation_marks(ax, codes)
    if image is not None:
        ax.imshow(np.rot90(np.asarray(image)), cmap="gray", interpolation="nearest")
    entries = []
    if labels is not None:
        entries = label_entries(labels, protocol)
        ax.imshow(np.rot90(label_rgba(labels, protocol, alpha), axes=(0, 1)), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return entries


def legend_handles(entries, with_values: bool = True) -> list:
    """Legend patches for (value, name, colour) entries, in a fixed order of classes (duplicates dropped)."""
    from matplotlib.patches import Patch

    order = list(CLASS_COLOURS)
    seen, handles = set(), []
    for value, name, colour in sorted(
        entries, key=lambda e: (order.index(e[1]) if e[1] in order else len(order), e[0])
    ):
        text = f"{value} {name}" if with_values else name
        if text not in seen:
            seen.add(text)
            handles.append(Patch(facecolor=colour, edgecolor="black", linewidth=0.4, label=text))
    return handles


def protocol_entries(protocol: str = "output", present: np.ndarray | None = None) -> list[tuple[int, str, str]]:
    """Every class of a protocol (for a legend that explains colours not on screen too); the resection cavity of
    ``output`` only when ``present`` holds it."""
    classes = LABEL_CLASSES.get(protocol, {})
    values = {int(v) for v in np.unique(present)} if present is not None else set()
    keep = [v for v in classes if not (protocol == "output" and classes[v] == "resection cavity" and v not in values)]
    return [(v, classes[v], CLASS_COLOURS[classes[v]]) for v in keep]


# -- a run's rounds ----------------------------------------------------------------------------------------


def has_gated_head(rows: list[dict]) -> bool:
    """Does the run's model have a domain-gated head (two evaluation modes that mean different things)? The
    rows say so (``head``, which the round engine writes into each); in records from before they did, a
    gated head's two modes differ somewhere."""
    heads = {r["head"] for r in rows if r.get("head")}
    if heads:
        return "gated" in heads
    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["round"], r["site"], r["region"]), {})[r["mode"]] = r["dice"]
    return any(len(set(p.values())) > 1 for p in pairs.values())


def _site_key(site: str):
    return (len(site), site)


def _colours(n: int) -> list:
    plt = pyplot()
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / max(1, n - 1)) for i in range(n)]


def plot_run(records: list[dict], png: str | Path) -> Path | None:
    """``dice_per_round.png`` of one run's records (``RunLog.records``): the training loss per round above, each
    site's validation Dice (mean over the regions it annotates) per evaluated round below, with the mean over
    sites and regions. A gated model's sites are drawn dataset-free (the gate picks the expert, as deployed),
    its own-expert (oracle) mean dashed beside it; a plain head has one mode. None when there is nothing to draw.
    """
    from matplotlib.ticker import MaxNLocator

    train = {r["round"]: r for r in records if r.get("event") == "train" and "phase" not in r}
    rows = [r for r in records if "dice" in r and "phase" not in r and "site" in r and "mode" in r]
    losses = sorted((k, t["train-loss"]) for k, t in train.items() if t.get("train-loss") is not None)
    if not losses and not rows:
        return None
    plt = pyplot()
    strategy = next((str(r["strategy"]) for r in records if r.get("strategy")), "")
    run_id = next((str(r["run-id"]) for r in records if r.get("run-id")), "")
    gated = has_gated_head(rows)
    shown = "gated" if gated else "oracle"  # a plain head reports the same Dice under both names
    last = max([*train, *(r["round"] for r in rows)])
    sites = sorted({r["site"] for r in rows} | {s for t in train.values() for s in t.get("sites") or []}, key=_site_key)

    fig, (loss_ax, dice_ax) = plt.subplots(
        2, 1, figsize=(9, 6.4), sharex=True, gridspec_kw={"height_ratios": [1, 2]}, layout="constrained"
    )
    title = f"{strategy or 'run'}" + (f" · run {run_id if len(run_id) <= 24 else run_id[:8]}" if run_id else "")
    fig.suptitle(f"{title} · {len(sites)} sites · {last} rounds", fontsize=11)

    if losses:
        loss_ax.plot(*zip(*losses), marker="o", ms=3, lw=1.5, color="#444444")
    else:
        loss_ax.text(0.5, 0.5, "no training loss recorded", ha="center", va="center", transform=loss_ax.transAxes)
    loss_ax.set_ylabel("train loss")
    loss_ax.set_title("Training loss per round (mean over the sites that trained)", fontsize=9, loc="left")
    loss_ax.grid(alpha=0.3)

    by_site: dict[str, dict[int, list[float]]] = {}
    pooled: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        pooled.setdefault(r["mode"], {}).setdefault(r["round"], []).append(r["dice"])
        if r["mode"] == shown:
            by_site.setdefault(r["site"], {}).setdefault(r["round"], []).append(r["dice"])
    top = 0.0
    for site, colour in zip(sites, _colours(len(sites))):
        if site not in by_site:
            continue
        pts = sorted((k, sum(v) / len(v)) for k, v in by_site[site].items())
        top = max(top, *(y for _, y in pts))
        dice_ax.plot(*zip(*pts), marker="o", ms=5, lw=1.3, color=colour, label=f"site {site}: {pts[-1][1]:.3f}")
    means = {m: sorted((k, sum(v) / len(v)) for k, v in pooled.get(m, {}).items()) for m in ("gated", "oracle")}
    styles = {"gated": ("-", "black", "black"), "oracle": ("--", "#666666", "white")}
    names = {"gated": "mean, dataset-free (gate)", "oracle": "mean, own expert"} if gated else {}
    for mode in ("gated", "oracle") if gated else (shown,):
        if means[mode]:
            ls, colour, face = styles[mode] if gated else ("-", "black", "black")
            name = names.get(mode, "mean over sites and regions")
            label = f"{name}: {means[mode][-1][1]:.3f}"
            dice_ax.plot(*zip(*means[mode]), ls=ls, marker="s", ms=5, lw=2.2, color=colour, mfc=face, label=label)
    if rows:
        evaluated = sorted({r["round"] for r in rows})
        gate = [r for r in records if r.get("event") == "gate" and r.get("round") == evaluated[-1]]
        n = sum(int(g.get("val_cases") or 0) for g in gate)
        right = sum((g.get("gate-accuracy") or 0.0) * int(g.get("val_cases") or 0) for g in gate)
        when = f", evaluated after round {evaluated[0]} only" if len(evaluated) == 1 else ""
        what = " (dataset-free: no site label given)" if gated else ""
        note = f"\nthe gate picked the right expert for {right / n:.0%} of validation scans" if gated and n else ""
        dice_ax.set_title(f"Validation Dice per site{what}{when}{note}", fontsize=9, loc="left")
        dice_ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
            ncol=2 if len(sites) > 14 else 1,
            title="Dice at the last evaluation",
            title_fontsize=8,
        )
        dice_ax.set_ylim(0, min(1.0, max(0.1, math.ceil(top * 1.1 * 10) / 10)))
    else:
        dice_ax.text(0.5, 0.5, "no evaluation recorded", ha="center", va="center", transform=dice_ax.transAxes)
        dice_ax.set_ylim(0, 1)
    dice_ax.set_ylabel("Dice (mean over the site's regions)")
    dice_ax.set_xlabel("round")
    dice_ax.grid(alpha=0.3)
    dice_ax.set_xlim(0.5, last + 0.5)
    dice_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png

"""Does a trunk carry the tumour type? A linear probe of UMS-Rep's scan-level second task on S4 (issue 34, item 5).

    python -m simulation.umsrep_bench.type_probe --seeds 0 1 2 3 4 5 6 7 8 9 --page docs/umsrep-type-probe.md

Design (registered 2026-12-07 in this module and docs/method.md before it first ran):

- data: scenario S4 (docs/scenarios.md: five sites, each with a case mix of tumour types), the UMS-Rep bench's
  sizes otherwise (``jobs.DEFAULT``: 8 cases per site, 3 mm, patch 24, DynUNet 8-16-32-64, U-Harmony); the seed
  draws the data and the initial weights;
- arms, from the same initial weights and batches: ``random`` (no phase P) and ``denoise`` (the product's phase
  P, central, 320 steps, as the presence probe: ``probe.central_phase_p``);
- readout: ``--patches`` (8) patches per case, each centred on tumour, of every case (training and validation:
  phase P never sees a type, and the probe holds out whole cases); every encoder scale pooled by mean and max
  (the presence head's default readout), standardized in the training fold;
- probe: per type, an L2 logistic regression of "this type or not" (``probe.linear_probe``), 5 folds of whole
  cases; a case's score for a type is the mean of its patches' held-out logits. Estimand: the **case-level
  macro AUROC** (the mean over the types of each type's one-vs-rest AUROC over every case); beside it the
  patch-level macro AUROC and the balanced accuracy of the case's highest score;
- control ``site``: a case's score for a type is that type's share among the training fold's cases of the
  case's own site: what recognising the scanner alone gives (in S4 type and site are associated, as in real
  consortia);
- seeds 0-9 (no decision was ever taken on S4); reported: each arm's mean with its 95 % interval, the paired
  differences denoise − random and denoise − site over seeds. Target (issue 34): AUROC >= 0.9 from the
  pretrained trunk. This is a probe of the features, not the trained head of the second task (not built yet).

Each (seed, arm) is a JSONL record in ``--out``/type_probe.jsonl, written as it is made; ``--page`` writes the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from uharmony.files import append_jsonl, read_jsonl

from ..kit.page import publish
from .probe import _features, central_phase_p, fold_splits, linear_probe

ARMS = ("site", "random", "denoise")
SCENARIO = {"synth-scenario": "S4"}
FOLDS = 5


def case_scores(scores, cases) -> dict[int, float]:
    """The mean held-out score of each case's patches."""
    sums: dict[int, list[float]] = {}
    for s, c in zip(scores.tolist(), cases.tolist()):
        sums.setdefault(int(c), []).append(float(s))
    return {c: statistics.fmean(v) for c, v in sums.items()}


def macro_scores(scores: dict[str, dict[int, float]], types: dict[int, str]) -> dict:
    """Case-level one-vs-rest AUROC per type, their mean, and the balanced accuracy of each case's highest score
    (``scores``: type -> case -> score; ``types``: case -> its type)."""
    import torch
    from monai.metrics import compute_roc_auc

    cases = sorted(types)
    per_type = {}
    for t, by_case in scores.items():
        y = torch.tensor([float(types[c] == t) for c in cases])
        if 0 < float(y.sum()) < len(y):
            per_type[t] = float(compute_roc_auc(torch.tensor([by_case[c] for c in cases]), y))
    chosen = {c: max(scores, key=lambda t, c=c: scores[t][c]) for c in cases}
    recalls = [
        statistics.fmean(float(chosen[c] == t) for c in cases if types[c] == t)
        for t in sorted(set(types.values()))
        if t in scores
    ]
    return {
        "macro_auroc": statistics.fmean(per_type.values()) if per_type else float("nan"),
        "per_type": per_type,
        "balanced_accuracy": statistics.fmean(recalls) if recalls else float("nan"),
    }


def site_control(types: dict[int, str], sites: dict[int, str], seed: int) -> dict:
    """Each case scored by its type's share among the training fold's cases of its own site (the same folds of
    whole cases as the probes)."""
    import torch

    order = sorted(types)
    ids = torch.tensor(order)
    scores = {t: {} for t in sorted(set(types.values()))}
    for test, train in fold_splits(len(order), FOLDS, seed, ids):
        for i in test.tolist():
            c = order[i]
            own = [order[j] for j in train.tolist() if sites[order[j]] == sites[c]]
            for t in scores:
                scores[t][c] = sum(types[k] == t for k in own) / len(own) if own else 0.0
    return macro_scores(scores, types)


def run_seed(seed: int, arm: str, steps: int, per_case: int, overrides=None) -> dict:
    """One record: the arm's case-level macro AUROC and its companions on the federation of ``seed``."""
    import torch

    from ..kit.machine import commit, machine

    t0 = time.time()
    pretext = {"random": None, "site": None, "denoise": "denoise"}[arm]
    cfg, sites, model, loss = central_phase_p(seed, pretext, steps, overrides={**SCENARIO, **(overrides or {})})
    typed = {(s.site.name, c.case_id): c.tumour_type for s in sites for c in s.site.cases}
    kept = [(s.site.name, it) for s in sites for it in s.train + s.val if typed.get((s.site.name, it["case_id"]))]
    items = [it for _, it in kept]
    types = {i: typed[(name, it["case_id"])] for i, (name, it) in enumerate(kept)}
    record = {"seed": seed, "arm": arm, "steps": steps if pretext else 0, "cases": len(items), "per_case": per_case}
    record["type_counts"] = {t: list(types.values()).count(t) for t in sorted(set(types.values()))}
    if arm == "site":
        record.update(site_control(types, {i: name for i, (name, _) in enumerate(kept)}, seed))
    else:
        x, _, cases = _features(model, items, cfg.patch_size, seed, per_case, "multiscale", neg=0)
        by_case, patch_auroc = {}, []
        for t in sorted(set(types.values())):
            y = torch.tensor([float(types[int(c)] == t) for c in cases])
            probe = linear_probe(x, y, folds=FOLDS, seed=seed, groups=cases, scores=True)
            by_case[t] = case_scores(probe["scores"], cases)
            patch_auroc.append(probe["auroc"])
        record.update(macro_scores(by_case, types), patch_macro_auroc=statistics.fmean(patch_auroc))
        record.update(train_loss=loss, patches=len(cases))
    record.update(seconds=round(time.time() - t0, 1), machine=machine(), commit=commit())
    record["threads"] = torch.get_num_threads()
    return record


def _mean(values: list[float]):
    """The mean with its 95 % t interval (one value: no interval, shown as the value)."""
    from simulation.kit.stats import interval

    m = interval(values)
    return m if m.n >= 2 else type(m)(m.mean, m.mean, m.mean, m.p, 1)


def page(records: list[dict]) -> str:
    from simulation.kit.stats import interval, paired

    lines = [
        "# UMS-Rep second task: does a trunk carry the tumour type? (`python -m simulation.umsrep_bench.type_probe`)",
        "",
        "Scenario S4 (sites with a case mix of tumour types). Linear probes (one-vs-rest, 5 folds of whole cases) "
        "of each case's tumour type from the frozen trunk read at every scale on tumour-centred patches; `site`: "
        "the type's share at the case's own site (no image). Design: the module's docstring.",
        "",
        "| arm | seeds | case-level macro AUROC ×100 (mean [95 % CI]; per seed) | balanced accuracy ×100 "
        "| patch-level macro AUROC ×100 |",
        "|---|---|---|---|---|",
    ]
    by_arm = {a: {r["seed"]: r for r in records if r["arm"] == a} for a in ARMS}
    for arm in ARMS:
        rs = [by_arm[arm][k] for k in sorted(by_arm[arm])]
        if not rs:
            continue
        m = _mean([r["macro_auroc"] * 100 for r in rs])
        patch = [r["patch_macro_auroc"] * 100 for r in rs if "patch_macro_auroc" in r]
        seeds = ", ".join(str(r["seed"]) for r in rs)
        each = ", ".join(f"{r['macro_auroc'] * 100:.1f}" for r in rs)
        balanced = statistics.fmean(r["balanced_accuracy"] * 100 for r in rs)
        patch_text = f"{statistics.fmean(patch):.1f}" if patch else "—"
        lines.append(
            f"| {arm} | {seeds} | {m.mean:.1f} [{m.low:.1f}, {m.high:.1f}]; {each} | {balanced:.1f} | {patch_text} |"
        )
    lines.append("")
    for a, b in (("denoise", "random"), ("denoise", "site")):
        common = sorted(set(by_arm[a]) & set(by_arm[b]))
        if len(common) >= 2:
            d = paired({k: by_arm[a][k]["macro_auroc"] * 100 for k in common},
                       {k: by_arm[b][k]["macro_auroc"] * 100 for k in common})  # fmt: skip
            sig = "" if d.low > 0 or d.high < 0 else ", not significant"
            lines.append(f"- {a} − {b}: {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] AUROC ×100, {d.n} seeds{sig}")
    done = sorted(by_arm["denoise"])
    if done:
        m = interval([by_arm["denoise"][k]["macro_auroc"] for k in done])
        verdict = "met" if m.mean >= 0.9 else "missed"
        bound = (
            f"; its 95 % lower bound {m.low:.3f} {'also clears' if m.low >= 0.9 else 'does not clear'} 0.9"
            if m.n > 1
            else ""
        )
        lines.append(
            f"- Target (issue 34), AUROC ≥ 0.9 from the pretrained trunk, on the mean over seeds: **{verdict}** "
            f"({m.mean:.3f}{bound})"
        )
    lines += _per_type_lines(by_arm)
    machines = sorted({r["machine"] for r in records})
    lines += ["", f"Machine: {'; '.join(machines)}."]
    return "\n".join(lines) + "\n"


def _per_type_lines(by_arm: dict) -> list[str]:
    """Each type's one-vs-rest AUROC per arm (mean over seeds), and what the site control is and is not."""
    types = sorted({t for rs in by_arm.values() for r in rs.values() for t in r.get("per_type", {})})
    if not types:
        return []
    out = ["", "| arm | " + " | ".join(f"{t} ×100" for t in types) + " |", "|---|" + "---|" * len(types)]
    for arm in ARMS:
        rs = list(by_arm[arm].values())
        if rs:
            cells = [[r["per_type"][t] * 100 for r in rs if t in r.get("per_type", {})] for t in types]
            out.append(f"| {arm} | " + " | ".join(f"{statistics.fmean(c):.1f}" if c else "—" for c in cells) + " |")
    out += [
        "",
        "Read with care: `site` is what a classifier that knows only the site reaches *cross-validated* on these "
        "few cases (the site's own mix known exactly would score higher), so denoise − site above 0 does not "
        "show the trunk reads the tumour rather than the scanner. In S4 every paediatric case is at site 4, so "
        "that type's AUROC is largely site recognition; the other types occur at three or more sites. Patches are "
        "centred on the true tumour: an optimistic readout beside a deployed head.",
    ]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="umsrep-type-probe", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--steps", type=int, default=320, help="central phase-P steps of the denoise arm")
    p.add_argument("--patches", type=int, default=8, help="tumour-centred patches per case")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--out", type=Path, default=Path("runs/umsrep-type-probe"))
    p.add_argument("--page", type=Path, default=None, help="also write the table here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "type_probe.jsonl"
    records = read_jsonl(path)
    # a record is reused only for the settings it was made with (per_case absent: the registered 8)
    done = {(r["seed"], r["arm"], r["steps"], r.get("per_case", 8)) for r in records}
    for seed in a.seeds:
        for arm in a.arms:
            if (seed, arm, a.steps if arm == "denoise" else 0, a.patches) in done:
                continue
            rec = run_seed(seed, arm, a.steps, a.patches)
            append_jsonl(path, rec)
            records.append(rec)
            print(f"[type-probe] seed {seed} {arm}: macro AUROC {rec['macro_auroc']:.3f}, "
                  f"balanced accuracy {rec['balanced_accuracy']:.3f}, {rec['seconds']} s", flush=True)  # fmt: skip
    steps = {"denoise": a.steps}
    text = page(
        [
            r
            for r in records
            if r["seed"] in a.seeds and r["steps"] == steps.get(r["arm"], 0) and r.get("per_case", 8) == a.patches
        ]
    )
    return publish(text, a.page)


if __name__ == "__main__":
    sys.exit(main())

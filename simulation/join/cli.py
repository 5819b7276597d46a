"""``uharmony-join``: train on three sites, let a fourth join with a new modality and a new class.

    uharmony-join                 # default size, seed 0: about 10 min on 2 CPU cores; writes docs/join.md
    uharmony-join --seeds 0 1 2   # more seeds
    uharmony-join --quick         # toy size in about a minute: runs/join-quick/join.md

Both arms run the product's round engine and ClientApp (``simulation.runner.run``; ``--transport flower``
for Flower's simulation runtime) on the embedded federation with one post-operative joining site
(``synth-join-sites=1``): the *join* arm brings site 4's SuperNode online in round ``join_round``
(``join-schedule``); the *control* arm never does. Each finished arm
is kept, so an interrupted command continues where it stopped. Results: ``OUT/join.jsonl`` (one summary
per seed), ``OUT/join.png`` and the Markdown page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from simulation.kit.machine import machine
from simulation.runner import TRANSPORTS, run
from uharmony.federation.config import parse_assignments
from uharmony.records.runlog import RunLog

from .report import markdown, plot, summarize

DEFAULT = dict(
    rounds=10,
    join_round=7,
    sites=4,
    cases_per_site=8,
    spacing=3.0,
    local_steps=40,
    extra={"patch-size": 32, "filters": "16,32,64,128", "batch-size": 2},
)
QUICK = dict(
    rounds=3,
    join_round=3,
    sites=4,
    cases_per_site=3,
    spacing=6.0,
    local_steps=2,
    extra={"patch-size": 16, "filters": "8,16,32", "batch-size": 1},
)


def run_arms(size: dict, seed: int, out: Path, extra: dict | None = None, transport: str = "inprocess") -> dict:
    """Run (or reuse) both arms for one seed; returns the seed's summary."""
    join_site = str(size["sites"])
    cfg = {
        "synth-scenario": "",
        "synth-sites": size["sites"],
        "synth-join-sites": 1,
        "synth-cases-per-site": size["cases_per_site"],
        "synth-spacing": size["spacing"],
        "spacing": size["spacing"],
        "local-steps": size["local_steps"],
        "num-server-rounds": size["rounds"],
        "eval-every": 1,  # the report compares every round before and after the join
        "seed": seed,
        "strategy": "uharmony",
        **size["extra"],
        **(extra or {}),
    }
    dirs = {}
    for arm, join_at in (("join", size["join_round"]), ("control", size["rounds"] + 1)):
        run_dir = out / f"seed{seed}" / arm
        dirs[arm] = run_dir
        if RunLog(run_dir).done() is not None:
            print(f"[join] seed {seed} {arm}: kept {run_dir}", flush=True)
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        print(
            f"[join] seed {seed} {arm}: site {join_site} online from round {join_at} "
            f"({'never' if join_at > size['rounds'] else 'joins'})",
            flush=True,
        )
        t0 = time.time()
        run({**cfg, "join-schedule": f"{join_site}@{join_at}", "run-dir": str(run_dir)}, transport=transport)
        print(f"[join] seed {seed} {arm}: done in {time.time() - t0:.0f} s", flush=True)
    return summarize(dirs["join"], dirs["control"], join_site, size["join_round"], size["rounds"], seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-join", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toy size (about a minute)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/join or runs/join-quick)")
    p.add_argument(
        "--md", type=Path, default=None, help="Markdown page (default docs/join.md, or OUT/join.md with --quick)"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other run-config entries for both arms")
    p.add_argument("--transport", choices=TRANSPORTS, default="inprocess")
    a = p.parse_args(argv)
    size = QUICK if a.quick else DEFAULT
    out = a.out or Path("runs/join-quick" if a.quick else "runs/join")
    md = a.md or (out / "join.md" if a.quick else Path("docs/join.md"))
    t0 = time.time()
    try:
        extra = parse_assignments(a.set)
        summaries = [run_arms(size, seed, out, extra, a.transport) for seed in a.seeds]
    except (ValueError, RuntimeError) as exc:
        print(f"uharmony-join: error: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "join.jsonl", "w") as f:
        for s in summaries:
            f.write(json.dumps(s) + "\n")
    art = md.parent / "join" if md.parent != out else out
    art.mkdir(parents=True, exist_ok=True)
    png = plot(summaries, art / "join.png")
    if art != out:
        shutil.copy(out / "join.jsonl", art / "join.jsonl")
    meta = {
        "command": "uharmony-join" + (" --quick" if a.quick else "") + f" --seeds {' '.join(map(str, a.seeds))}",
        "machine": machine(),
        "seconds": time.time() - t0,
        "sites": size["sites"],
        "cases_per_site": size["cases_per_site"],
        "spacing": size["spacing"],
        "local_steps": size["local_steps"],
    }
    (art / "meta.json").write_text(json.dumps(meta, indent=1))  # with join.jsonl: what the page is rendered from
    md.write_text(markdown(summaries, meta, str(png.relative_to(md.parent))))
    for s in summaries:
        g = s["modes"]["gated"]
        print(
            json.dumps(
                {
                    "seed": s["seed"],
                    "old sites, gated": {k: round(sum(v.values()) / len(v), 3) for k, v in g["old_sites"].items() if v},
                    "max change after extension": g["max_change_after_extension"],
                    "new site final, gated": {k: round(v, 3) for k, v in g["new_site"]["final"].items()},
                }
            ),
            flush=True,
        )
    print(f"[join] wrote {md}, {png}, {out / 'join.jsonl'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

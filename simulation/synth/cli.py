"""``uharmony-data``: make the federations a simulation runs on.

uharmony-data synth --out DIR --sites N --cases-per-site M --seed S [--spacing MM] [--first-site K] [--join-sites J]
uharmony-data embedded [--run-config "seed=1 synth-sites=4"]    # the run's embedded federation (cached)
uharmony-data partition KIND --root DATASET --out DIR [--csv partitioning_1.csv] [--strict]   # simulation/partition.py
uharmony-data stats --root DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uharmony.data import DataError
from uharmony.data.manifest import absolute

from ..embedded import ensure_federation
from ..main_job import run_config
from ..partition import KINDS, partition, summary
from .generate import generate_federation
from .montage import site_montage
from .profiles import make_join_profile, make_site_profile
from .scenarios import SCENARIOS, scenario_profiles
from .stats import write_stats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="uharmony-data", description="Embedded federation data tools")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="synthesize a multi-institution brain-lesion federation (NIfTI, BraTS layout)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--sites", type=int, default=4)
    s.add_argument("--cases-per-site", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm (1-6)")
    s.add_argument(
        "--first-site",
        type=int,
        default=0,
        help="index of the first site; use the site count of an existing federation to make unseen sites",
    )
    s.add_argument(
        "--join-sites",
        type=int,
        default=0,
        help="make the last N sites post-operative joiners: extra ADC contrast, BraTS 2024 labels "
        "with the resection cavity (a modality and a class the others lack)",
    )
    s.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=None,
        help="one of the benchmark's scenarios (docs/scenarios.md); it fixes the sites",
    )
    s.add_argument("--kappa", type=float, default=1.0, help="S2: strength of the label-convention conflicts (0..2)")
    s.add_argument(
        "--val-cases", type=int, default=0, help="held-out validation cases per site beyond --cases-per-site"
    )
    s.add_argument("--no-montage", action="store_true")
    t = sub.add_parser(
        "stats", help="per-site mean intensity per contrast and lesion volume (prints + site_stats.jsonl)"
    )
    t.add_argument("--root", type=Path, required=True)
    e = sub.add_parser("embedded", help="generate (once) the embedded federation a run config uses; prints its folder")
    e.add_argument("--run-config", "-c", default="", help="run-config entries as for `flwr run -c`")
    q = sub.add_parser("partition", help="partition a public dataset by institution into a federation manifest")
    q.add_argument("kind", choices=KINDS)
    q.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    q.add_argument("--out", type=Path, required=True, help="folder for federation.json (the run's data-root)")
    q.add_argument(
        "--csv",
        default=None,
        help="brats2021 / fets2022: the FeTS partition CSV, a path from the current folder; a bare name not found "
        "there is looked up under --root (default: ROOT/partitioning_1.csv)",
    )
    q.add_argument("--strict", action="store_true", help="a subject the CSV names but the tree lacks is an error")
    a = parser.parse_args(argv)
    for key in ("out", "root"):  # folders are taken from the current folder, once, here
        if getattr(a, key, None) is not None:
            setattr(a, key, absolute(getattr(a, key)))
    if a.command in ("embedded", "partition"):
        try:
            if a.command == "embedded":
                print(ensure_federation(run_config(a.run_config)))
            else:
                manifest = partition(a.kind, a.root, a.out, a.csv, a.strict)
                print(manifest.parent, flush=True)  # (stdout: the folder, for scripts; the summary goes to stderr)
                print(summary(manifest), file=sys.stderr)
        except (ValueError, DataError) as exc:
            print(f"uharmony-data: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if a.command == "stats":
        try:
            out = write_stats(a.root)
        except (OSError, KeyError) as exc:
            print(f"uharmony-data: error: {exc}", file=sys.stderr)
            return 2
        for line in out.read_text().splitlines():
            print(line)
        return 0
    try:
        if not 0 <= a.join_sites <= a.sites:
            raise ValueError(f"--join-sites must be in [0, --sites], got {a.join_sites}")
        if a.scenario:
            profiles = scenario_profiles(a.scenario, a.seed, a.cases_per_site, a.kappa)
        else:
            idx = [a.first_site + i for i in range(a.sites)]
            profiles = [make_site_profile(a.seed, i) for i in idx[: a.sites - a.join_sites]] + [
                make_join_profile(a.seed, i) for i in idx[a.sites - a.join_sites :]
            ]
        desc = generate_federation(
            a.out,
            len(profiles),
            a.cases_per_site,
            a.seed,
            a.spacing,
            a.first_site,
            profiles=profiles,
            val_cases=a.val_cases,
        )
    except ValueError as exc:
        print(f"uharmony-data: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(a.out), "sites": len(desc["sites"]), "seconds": desc["seconds"]}))
    if not a.no_montage:
        print(f"montage: {site_montage(a.out, a.out / 'montage.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

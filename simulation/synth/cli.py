"""``uharmony-data``: create the embedded synthetic federation.

    uharmony-data synth --out DIR --sites N --cases-per-site M --seed S [--spacing MM] [--first-site K] [--join-sites J]
    uharmony-data stats --root DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .generate import generate_federation
from .montage import site_montage
from .profiles import make_join_profile, make_site_profile
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
    s.add_argument("--first-site", type=int, default=0,
                   help="index of the first site; use the site count of an existing federation to make unseen sites")
    s.add_argument("--join-sites", type=int, default=0,
                   help="make the last N sites post-operative joiners: extra ADC contrast, BraTS 2024 labels "
                        "with the resection cavity (a modality and a class the others lack)")
    s.add_argument("--no-montage", action="store_true")
    t = sub.add_parser("stats", help="per-site mean intensity per contrast and lesion volume (prints + site_stats.jsonl)")
    t.add_argument("--root", type=Path, required=True)
    a = parser.parse_args(argv)
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
        idx = [a.first_site + i for i in range(a.sites)]
        profiles = [make_site_profile(a.seed, i) for i in idx[:a.sites - a.join_sites]] + [
            make_join_profile(a.seed, i) for i in idx[a.sites - a.join_sites:]]
        desc = generate_federation(a.out, a.sites, a.cases_per_site, a.seed, a.spacing, a.first_site, profiles=profiles)
    except ValueError as exc:
        print(f"uharmony-data: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(a.out), "sites": len(desc["sites"]), "seconds": desc["seconds"]}))
    if not a.no_montage:
        print(f"montage: {site_montage(a.out, a.out / 'montage.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

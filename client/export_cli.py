"""``uharmony-export``: the federated model as a MONAI bundle (and TorchScript) a hospital can deploy.

    uharmony-export --model runs/latest/final_model.pt --out bundle/ [--state-dir /var/lib/uharmony]
                    [--trusted-key trusted-entities.yaml]

With ``--state-dir`` (the site's state folder, or one ``uharmony-calibrate`` wrote) the bundle carries that
site's harmonization statistics; without it, scans are standardized with their own. The bundle is checked
with MONAI's ``verify_net_in_out`` and the TorchScript against PyTorch (``uharmony/export.py``); then
``uharmony-segment --model bundle/ ...`` runs from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uharmony.checkpoint import CheckpointError, load_checkpoint
from uharmony.data import DataError
from uharmony.export import export_bundle, verify_bundle

from .segment_cli import _trusted, load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-export", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="final_model.pt of a run")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    p.add_argument("--state-dir", type=Path, default=None, help="this site's statistics (site state folder)")
    p.add_argument("--trusted-key", type=Path, default=None, help="coordinator's public key(s): must be signed")
    a = p.parse_args(argv)
    try:
        trusted = _trusted(a.trusted_key, "uharmony-export")
        model, _, spacing, roi, with_site = load_model(a.model, a.state_dir, trusted)
        extra = load_checkpoint(a.model.parent, a.model.name, trusted=trusted)
        run = {
            "strategy": extra["extra"].get("strategy"),
            "round": extra["round"],
            "site-statistics": f"state-dir {a.state_dir}" if with_site else "initial values",
        }
        check = export_bundle(model, a.out, spacing, roi, run)
        verify_bundle(a.out)
    except (DataError, CheckpointError, ValueError, OSError) as exc:
        print(f"uharmony-export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"bundle": str(a.out), "torchscript-max-abs-diff": check["max-abs-diff"], "verified": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

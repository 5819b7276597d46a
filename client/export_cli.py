"""``uharmony-export``: the federated model as a signed MONAI bundle (and TorchScript) a hospital can deploy.

    uharmony-export --model runs/latest/final_model.pt --out bundle/ [--state-dir /var/lib/uharmony]
                    [--trusted-key model-signing.pub] [--signing-key KEY [--passphrase-file F]]
    uharmony-export --verify bundle/ --trusted-key model-signing.pub

With ``--state-dir`` (the site's state folder, or one ``uharmony-calibrate`` wrote) the bundle carries that
site's harmonization statistics; without it, scans are standardized with their own. The bundle's
``manifest.json`` lists every file's SHA-256 and a release record (the model's run and round, its kind,
an expiry no later than the model's); ``--signing-key`` (an Ed25519 OpenSSH key: the coordinator's
``model-signing.key``, or the hospital's own from ``ssh-keygen -t ed25519``) signs it as ``manifest.sig``.
Without it the bundle is unsigned: it still runs, but ``--verify`` and ``uharmony-segment --trusted-key`` refuse
it (a bundle is checked against the key that signed it, never taken on trust).
The bundle is checked with MONAI's ``verify_net_in_out`` and the TorchScript against PyTorch
(``uharmony/records/export.py``). ``--verify`` checks a bundle (digests, signature, release, configs) before its
``configs/inference.json`` is given to MONAI; ``uharmony-segment --model bundle/ --trusted-key ...`` makes
the same checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from uharmony.data import DataError
from uharmony.records.bundle_trust import MODEL, BundleError
from uharmony.records.checkpoint import CheckpointError
from uharmony.records.deployable import open_model_file
from uharmony.records.export import export_bundle, open_bundle, verify_bundle
from uharmony.records.release import ReleaseError, kind_of, release_record
from uharmony.records.signing import SignatureError, load_private_key

from .segment_cli import _revocations, _trusted, add_trust_options, load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-export", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="final_model.pt of a run")
    p.add_argument("--out", type=Path, default=None, help="the bundle folder to write")
    p.add_argument("--verify", type=Path, default=None, help="check this bundle instead (needs --trusted-key)")
    p.add_argument("--state-dir", type=Path, default=None, help="this site's statistics (site state folder)")
    p.add_argument("--signing-key", type=Path, default=None, help="Ed25519 OpenSSH private key that signs the bundle")
    p.add_argument("--passphrase-file", type=Path, default=None, help="the signing key's passphrase, if encrypted")
    p.add_argument("--valid-days", type=float, default=None, help="the bundle's release expires after this")
    add_trust_options(p)
    a = p.parse_args(argv)
    if (a.verify is None) == (a.model is None) or (a.model is not None and a.out is None):
        p.error("give --model and --out to export, or --verify BUNDLE to check one")
    try:
        if a.verify is not None:
            return _verify(a)
        out = _export(a)
    except (DataError, CheckpointError, BundleError, ReleaseError, SignatureError, ValueError, OSError) as exc:
        print(f"uharmony-export: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def _verify(a) -> int:
    if a.trusted_key is None:
        raise BundleError(
            "--verify needs --trusted-key: the public key of the bundle's signer (e.g. model-signing.pub)"
        )
    trusted = _trusted(a.trusted_key, "uharmony-export")
    _, _, _, _, manifest = open_bundle(a.verify, trusted, a.allow_checkpoint, _revocations(a.revoked))
    print(json.dumps({"bundle": str(a.verify), "verified": True, "release": manifest.get("release")}))
    return 0


def _export(a) -> dict:
    trusted = _trusted(a.trusted_key, "uharmony-export")
    revoked = _revocations(a.revoked)
    signer = None
    if a.signing_key is not None:
        password = a.passphrase_file.read_bytes().strip() if a.passphrase_file else None
        signer = load_private_key(a.signing_key, password)
    else:
        print(
            "uharmony-export: warning: the bundle is not signed (give --signing-key): "
            "uharmony-segment --trusted-key will refuse it",
            file=sys.stderr,
        )
    model, _, spacing, roi, with_site = load_model(a.model, a.state_dir, trusted, a.allow_checkpoint, revoked)
    source = open_model_file(a.model, trusted, a.allow_checkpoint, revoked)  # checked above; its release here
    release = _bundle_release(a.model, source, a.valid_days)
    run = {
        "strategy": source["extra"].get("strategy"),
        "round": source["round"],
        "site-statistics": "state-dir" if with_site else "initial values",  # no local path in the bundle
    }
    check = export_bundle(model, a.out, spacing, roi, run, release, signer)
    verify_bundle(a.out)
    open_bundle(a.out, [signer.public_key()] if signer is not None else None, True, revoked)  # as a hospital will
    return {
        "bundle": str(a.out),
        "torchscript-max-abs-diff": check["max-abs-diff"],
        "verified": True,
        "signed": signer is not None,
        "release": {k: release[k] for k in ("run-id", "round", "kind", "expires")},
    }


def _bundle_release(model_path: Path, source: dict, valid_days: float | None) -> dict:
    """The bundle's release: the source model's run, round and kind, expiring no later than the source."""
    src = source.get("release") or {}
    kind = src.get("kind") or kind_of(model_path.name)
    record = release_record(
        MODEL,
        "",
        src.get("run-id") or source["extra"].get("run-id", ""),
        source["round"],
        kind,
        valid_days,
        **{"source-file": model_path.name, "source-sha256": source["sha256"]},
    )
    if src.get("expires") and src["expires"] < record["expires"]:  # ISO 8601 UTC strings order as times
        record["expires"] = src["expires"]
    return record


if __name__ == "__main__":
    sys.exit(main())

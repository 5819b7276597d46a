"""Checks on a MONAI bundle before anything in it is used: its manifest, signature, release and configs.

``manifest.json`` at the bundle's root lists the SHA-256 of every file in the bundle and its release record
(``uharmony.records.release``); ``manifest.sig`` is the Ed25519 signature of it (``uharmony.records.signing``). A bundle
passes :func:`check_bundle` only if no file is missing, changed or unlisted (a stray ``configs/logging.conf``
would be read by MONAI), the signature is by a trusted key (when keys are given), the release may run now,
and its configs hold only what ``uharmony-export`` writes: known ``_target_`` names, the few ``$``
expressions it writes, references to its own ids, and no ``%`` macros (:func:`check_config`). MONAI's
``ConfigParser`` runs any ``$`` expression and instantiates any ``_target_``: verify a bundle with
``uharmony-export --verify`` before giving ``configs/inference.json`` to MONAI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from uharmony.files import read_small, sha256_file
from uharmony.records.release import ReleaseError, Revocations, check_release
from uharmony.records.signing import SIGNATURE, SignatureError, verify_manifest

MANIFEST = "manifest.json"
FORMAT = "uharmony-bundle/1"
MODEL = "models/model.pt"
_DIGEST = re.compile(r"[0-9a-f]{64}")

ALLOWED_TARGETS = frozenset(
    {
        "uharmony.model.networks.model_from_spec",
        "uharmony.records.bundle_parts.case_folders",
        "uharmony.records.bundle_parts.ReadCaseFolderd",
        "uharmony.records.bundle_parts.ScanGatedInferer",
        "uharmony.records.bundle_parts.RegionsToLabelsd",
        "Compose",
        "Orientationd",
        "Spacingd",
        "CropForegroundd",
        "NormalizeIntensityd",
        "Dataset",
        "DataLoader",
        "Activationsd",
        "Invertd",
        "SaveImaged",
        "CheckpointLoader",
        "SupervisedEvaluator",
    }
)
# what bundles exported before uharmony/ was layered (2026-12-07) named: refused with a clear way out
EARLIER_TARGETS = frozenset(
    {"uharmony.networks.model_from_spec", "uharmony.export.ScanGatedInferer"}
    | {
        f"uharmony.bundle_parts.{n}"
        for n in ("case_folders", "ReadCaseFolderd", "ScanGatedInferer", "RegionsToLabelsd")
    }
)
EXPRESSIONS = {  # every "$" expression uharmony-export writes, by the id it writes it at
    "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    "network": "$@network_def.to(@device)",
    "checkpoint": "$@bundle_root + '/models/model.pt'",
    "output_dir": "$@bundle_root + '/eval'",
    "run#0": "$@evaluator.run()",
}
REFERENCES = frozenset(
    {
        "@bundle_root",
        "@dataset_dir",
        "@output_dir",
        "@device",
        "@modalities",
        "@regions",
        "@spacing_mm",
        "@patch_size",
        "@network_def",
        "@network",
        "@checkpoint",
        "@datalist",
        "@preprocessing",
        "@dataset",
        "@dataloader",
        "@inferer",
        "@postprocessing",
        "@handlers",
        "@evaluator",
    }
)


class BundleError(ValueError):
    pass


def check_config(config, where: str, data_only: bool = False) -> None:
    """BundleError naming the key of the first item MONAI would run that ``uharmony-export`` does not write:
    a ``_target_`` outside ``ALLOWED_TARGETS``, a ``$`` expression other than ``EXPRESSIONS`` at its id, a
    reference to an unknown id, a ``%`` macro, another ``_…_`` key. ``data_only`` (the metadata): no
    target, expression, reference or macro at all."""

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                sub = f"{key}#{k}" if key else str(k)
                if not isinstance(k, str):
                    raise BundleError(f"{where}: key {sub!r} is not a string")
                if k.startswith("_") and k.endswith("_") and len(k) > 2:
                    if k != "_target_" or data_only:
                        raise BundleError(f"{where}: {sub}: {k!r} is not allowed")
                    if v in EARLIER_TARGETS:
                        raise BundleError(
                            f"{where}: {sub}: {v!r} is what an earlier uharmony-export wrote; this version's "
                            "modules moved: export the model again (uharmony-export) and use the new bundle"
                        )
                    if v not in ALLOWED_TARGETS:
                        raise BundleError(f"{where}: {sub}: target {str(v)[:120]!r} is not one uharmony-export writes")
                    continue
                walk(v, sub)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}#{i}")
        elif isinstance(node, str) and node[:1] in ("$", "%", "@"):
            if data_only or node.startswith("%"):
                raise BundleError(f"{where}: {key}: {node[:120]!r} would be evaluated by MONAI; not allowed here")
            if node.startswith("$") and EXPRESSIONS.get(key) != node:
                raise BundleError(f"{where}: {key}: expression {node[:120]!r} is not one uharmony-export writes")
            if node.startswith("@") and node not in REFERENCES:
                raise BundleError(f"{where}: {key}: reference {node[:120]!r} is not one uharmony-export writes")

    walk(config, "")


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(read_small(path))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return doc


def bundle_files(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file in the bundle but its manifest and signature."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():  # a linked file or folder, the manifest and signature included
            raise BundleError(f"{path}: a symbolic link; a bundle holds plain files only")
        if rel in (MANIFEST, SIGNATURE) or path.is_dir():
            continue
        if not path.is_file():
            raise BundleError(f"{path}: not a plain file; a bundle holds plain files only")
        out[rel] = sha256_file(path)
    return out


def check_bundle(
    folder: str | Path,
    trusted: list | None = None,
    allow_checkpoint: bool = False,
    revoked: Revocations | None = None,
    now=None,
) -> dict | None:
    """The bundle's manifest, after checking every file's digest, the signature (``trusted`` keys), the
    release record and the configs; None for a bundle without a manifest when no key is given (written
    before bundles had one: nothing can be checked)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        if trusted is not None:
            raise BundleError(f"{folder}: the bundle is not signed (no {MANIFEST}); export it with --signing-key")
        return None
    manifest = _read_json(manifest_path)
    listed = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(listed, dict):
        raise BundleError(f"{manifest_path}: not a bundle manifest of format {FORMAT!r}")
    if trusted is not None:
        try:
            verify_manifest(folder, trusted)
        except SignatureError as exc:
            raise BundleError(str(exc)) from None
    present = bundle_files(folder)
    for name in sorted(set(present) - set(listed)):
        raise BundleError(f"{folder / name}: not listed in {MANIFEST}; refusing a bundle with unlisted files")
    for name, digest in sorted(listed.items()):
        if name not in present:
            raise BundleError(f"{folder / name}: listed in {MANIFEST} but missing")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or present[name] != digest:
            raise BundleError(f"{folder / name}: SHA-256 differs from {MANIFEST}: changed after export; refusing it")
    if MODEL not in listed:
        raise BundleError(f"{manifest_path}: lists no {MODEL}")
    record = manifest.get("release")
    try:
        if record is not None or trusted is not None:
            check_release(record, MODEL, listed[MODEL], allow_checkpoint, revoked, now)
        elif revoked is not None and revoked.reason({"sha256": listed[MODEL]}):
            raise ReleaseError(f"{MODEL}: revoked: its sha256 is on the revocation list")
    except ReleaseError as exc:
        raise BundleError(f"{folder}: {exc}") from None
    check_config(_read_json(folder / "configs" / "metadata.json"), "configs/metadata.json", data_only=True)
    check_config(_read_json(folder / "configs" / "inference.json"), "configs/inference.json")
    return manifest

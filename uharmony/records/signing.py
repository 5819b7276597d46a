"""Signed model releases: the coordinator signs a checkpoint folder's manifest, a hospital verifies it.

The manifest (``manifest.json``) lists the SHA-256 of every model file and its release record
(``uharmony.records.release``: run, round, kind, expiry), so one Ed25519 signature of it (``manifest.sig``) covers
them all; a MONAI bundle's manifest is signed the same way (``uharmony.records.bundle_trust``). The coordinator
signs with the model-signing key ``uharmony-pki`` made (``model-signing.key``, OpenSSH); a hospital verifies
with its public half, ``model-signing.pub`` (not ``trusted-entities.yaml``: that holds the app-signing key).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from uharmony.files import atomic_write, read_small

SIGNATURE = "manifest.sig"
SIGNATURE_BYTES = 64 << 10  # a signature file is a key and a signature: far less
MANIFEST_BYTES = 16 << 20  # a run's manifest grows by about 0.4 kB a round: 40,000 rounds
_ED25519_LINE = re.compile(r"ssh-ed25519 [A-Za-z0-9+/=]+")


class SignatureError(ValueError):
    pass


def load_private_key(path: str | Path, password: bytes | None = None) -> ed25519.Ed25519PrivateKey:
    """An Ed25519 private key in OpenSSH format (``uharmony-pki``'s ``model-signing.key``, or ``ssh-keygen -t
    ed25519``), decrypted with ``password`` when it is encrypted."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=password)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: cannot read the signing key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path}: the signing key must be Ed25519")
    return key


def load_public_keys(path: str | Path) -> list[ed25519.Ed25519PublicKey]:
    """Every Ed25519 key in an OpenSSH public key file or a Flower trusted-entities file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the trusted keys ({exc.strerror})") from None
    keys = []
    for line in _ED25519_LINE.findall(text):
        try:
            keys.append(serialization.load_ssh_public_key(line.encode()))
        except ValueError:
            continue
    if not keys:
        raise SignatureError(f"{path}: no ssh-ed25519 public key in it")
    return keys


def sign_manifest(folder: str | Path, private_key: ed25519.Ed25519PrivateKey) -> Path:
    manifest = (Path(folder) / "manifest.json").read_bytes()
    pub = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    doc = {"signer": pub.decode(), "signature": base64.b64encode(private_key.sign(manifest)).decode()}
    return atomic_write(Path(folder) / SIGNATURE, json.dumps(doc, indent=2), mode=0o644)


def verify_manifest(folder: str | Path, trusted: list[ed25519.Ed25519PublicKey]) -> None:
    """Raises SignatureError unless ``folder``'s manifest carries a valid signature by one of ``trusted``."""
    folder = Path(folder)
    try:
        doc = json.loads(read_small(folder / SIGNATURE, SIGNATURE_BYTES))
        signature = base64.b64decode(doc["signature"], validate=True)
    except FileNotFoundError:
        raise SignatureError(f"{folder / SIGNATURE}: the model is not signed") from None
    except OSError as exc:
        raise SignatureError(f"{folder / SIGNATURE}: not readable ({exc.strerror})") from None
    except (KeyError, TypeError, ValueError) as exc:  # too large, not a plain file, not JSON, not a signature
        raise SignatureError(f"{folder / SIGNATURE}: not a signature file ({str(exc)[:200]})") from None
    try:
        manifest = read_small(folder / "manifest.json", MANIFEST_BYTES)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{folder / 'manifest.json'}: not readable ({str(exc)[:200]})") from None
    for key in trusted:
        try:
            key.verify(signature, manifest)
            return
        except InvalidSignature:
            continue
    raise SignatureError(f"{folder / 'manifest.json'}: its signature is not from a trusted key")

"""A hospital's own SuperNode key pair: made at the hospital, only the public key is sent.

    uharmony-site keygen --dir /etc/uharmony      # writes auth.key (0600) and auth.pub

The key is EC P-384 in OpenSSH format, what ``flower-supernode --auth-supernode-private-key`` expects.
The coordinator registers ``auth.pub`` for the site (``uharmony-coordinator register``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from uharmony.files import atomic_write


def generate_node_key(folder: Path, comment: str = "", force: bool = False) -> tuple[Path, Path]:
    """(private key, public key) paths; existing keys are never replaced without ``force``."""
    priv_path, pub_path = folder / "auth.key", folder / "auth.pub"
    if priv_path.exists() and not force:
        raise ValueError(f"{priv_path} exists; refusing to overwrite it (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write(priv_path, priv, mode=0o600)
    atomic_write(pub_path, pub + (f" {comment}" if comment else "").encode() + b"\n", mode=0o644)
    return priv_path, pub_path

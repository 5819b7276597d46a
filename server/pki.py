"""The coordinator's keys and certificates (``uharmony-pki``), made with ``cryptography``.

    uharmony-pki init-ca     --dir pki [--name "Consortium CA"] [--days 1825] [--passphrase-file F]
    uharmony-pki server-cert --dir pki --dns superlink.example.org --ip 10.0.0.5 [--days 825]
    uharmony-pki show        --dir pki

Layout of the coordinator's folder:
- ``ca.crt`` / ``ca.key``: the consortium CA (P-384). ``ca.key`` is encrypted with a passphrase when one is
  given (``--passphrase-file`` or ``UHARMONY_CA_PASSPHRASE``); it is needed only to issue certificates.
- ``superlink.crt`` / ``superlink.key``: TLS for the SuperLink and its gateway, signed by the CA, with the
  given DNS names / IPs and always ``localhost`` / ``127.0.0.1`` (the gateway and the coordinator's own
  ``flwr`` commands reach the SuperLink on the loopback interface).
- ``signing.key`` / ``signing.pub``: the coordinator's Ed25519 key. It signs the app the SuperNodes run
  (checked by Flower's ``--trusted-entities``) and the manifests of the models it releases.
  ``trusted-entities.yaml`` is what a hospital passes to its SuperNode.

Hospitals make their own SuperNode keys (``uharmony-site keygen``) and send only the public key;
the coordinator never holds them. Private keys are written 0600 and never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from uharmony.files import atomic_write

DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
LOOPBACK_NAMES, LOOPBACK_IPS = ["localhost"], ["127.0.0.1"]
PASSPHRASE_ENV = "UHARMONY_CA_PASSPHRASE"


class PKIError(ValueError):
    pass


def _write(path: Path, data: bytes, private: bool, force: bool) -> Path:
    if path.exists() and not force:
        raise PKIError(f"{path} exists; refusing to overwrite it (use --force to replace it)")
    return atomic_write(path, data, mode=0o600 if private else 0o644)


def _pem_key(key, passphrase: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if not 1 <= days <= 3650:
        raise PKIError(f"validity must be between 1 and 3650 days, got {days}")


def read_passphrase(path: Path | None) -> bytes | None:
    """The CA key's passphrase: from a file, else ``UHARMONY_CA_PASSPHRASE``, else none (unencrypted)."""
    if path is not None:
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            raise PKIError(f"{path}: cannot read the passphrase file ({exc.strerror})") from None
        if not value:
            raise PKIError(f"{path}: the passphrase file is empty")
        return value
    value = os.environ.get(PASSPHRASE_ENV, "").encode()
    return value or None


def init_ca(
    folder: Path,
    name: str = "U-Harmony consortium CA",
    days: int = 1825,
    force: bool = False,
    passphrase: bytes | None = None,
) -> Path:
    """Create the CA and the coordinator's signing key. A folder holding half a CA is refused."""
    _check_days(days)
    have = [n for n in ("ca.key", "ca.crt") if (folder / n).exists()]
    if have and not force:
        raise PKIError(f"{folder / have[0]} exists; refusing to overwrite the CA (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(folder / "ca.key", _pem_key(key, passphrase), private=True, force=force)
    path = _write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)
    if force or not (folder / "signing.key").exists():
        signing_key(folder, force=True)
    return path


def _load_ca(folder: Path, passphrase: bytes | None):
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        data = (folder / "ca.key").read_bytes()
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename}: not found; run `uharmony-pki init-ca --dir {folder}` first") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise PKIError(
            f"{folder / 'ca.key'} is encrypted: give its passphrase (--passphrase-file or {PASSPHRASE_ENV})"
        ) from None
    except ValueError:
        raise PKIError(f"{folder / 'ca.key'}: wrong passphrase or not a PEM private key") from None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise PKIError(f"{folder / 'ca.key'} does not belong to {folder / 'ca.crt'}")
    return cert, key


def server_cert(
    folder: Path, dns: list[str], ips: list[str], days: int = 825, force: bool = False, passphrase: bytes | None = None
) -> Path:
    _check_days(days)
    if not dns and not ips:
        raise PKIError("give at least one --dns name or --ip address for the SuperLink certificate")
    names: list[x509.GeneralName] = []
    for d in dict.fromkeys([*dns, *LOOPBACK_NAMES]):
        if not DNS_NAME.match(d):
            raise PKIError(f"invalid DNS name {d!r}")
        names.append(x509.DNSName(d))
    for ip in dict.fromkeys([*ips, *LOOPBACK_IPS]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PKIError(f"invalid IP address {ip!r}") from None
    ca_cert, ca_key = _load_ca(folder, passphrase)
    key = ec.generate_private_key(ec.SECP384R1())
    cn = dns[0] if dns else ips[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(folder / "superlink.key", _pem_key(key), private=True, force=force)
    return _write(folder / "superlink.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)


def public_key_id(public_openssh: bytes) -> str:
    """The id Flower's ``--trusted-entities`` file and app verifications use for a public key."""
    return "fpk_" + hashlib.sha256(public_openssh.split()[1]).hexdigest()[:32]


def signing_key(folder: Path, force: bool = False) -> Path:
    """The coordinator's Ed25519 key in OpenSSH format, and the trusted-entities file hospitals get."""
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(folder / "signing.key", priv, private=True, force=force)
    _write(folder / "signing.pub", pub + b" uharmony-coordinator\n", private=False, force=force)
    _write(
        folder / "trusted-entities.yaml",
        f"{public_key_id(pub)}: '{pub.decode()}'\n".encode(),
        private=False,
        force=force,
    )
    return folder / "signing.key"


def load_signing_key(folder: Path) -> ed25519.Ed25519PrivateKey:
    path = folder / "signing.key"
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise PKIError(f"{path}: not found; run `uharmony-pki init-ca --dir {folder}` first") from None
    except ValueError as exc:
        raise PKIError(f"{path}: not an OpenSSH private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PKIError(f"{path}: the coordinator's signing key must be Ed25519")
    return key


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-pki", description="The coordinator's keys and certificates")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init-ca", help="create the consortium CA and the coordinator's signing key")
    a.add_argument("--name", default="U-Harmony consortium CA")
    a.add_argument("--days", type=int, default=1825)
    s = sub.add_parser("server-cert", help="issue the SuperLink's TLS certificate")
    s.add_argument("--dns", action="append", default=[])
    s.add_argument("--ip", action="append", default=[])
    s.add_argument("--days", type=int, default=825)
    sub.add_parser("show", help="list what the PKI folder holds")
    for sp in (a, s, sub.choices["show"]):
        sp.add_argument("--dir", type=Path, required=True)
        sp.add_argument("--force", action="store_true", help="replace existing files")
        sp.add_argument(
            "--passphrase-file", type=Path, default=None, help=f"the CA key's passphrase (or {PASSPHRASE_ENV})"
        )
    args = p.parse_args(argv)
    try:
        passphrase = read_passphrase(args.passphrase_file)
        if args.cmd == "init-ca":
            path = init_ca(args.dir, args.name, args.days, args.force, passphrase)
            print(f"CA certificate: {path} (key {'encrypted' if passphrase else 'NOT encrypted'})")
            print(f"give hospitals: {args.dir / 'ca.crt'} and {args.dir / 'trusted-entities.yaml'}")
        elif args.cmd == "server-cert":
            print(
                f"SuperLink certificate: {server_cert(args.dir, args.dns, args.ip, args.days, args.force, passphrase)}"
            )
        else:
            for f in sorted(args.dir.iterdir()):
                print(f"{f.name}  ({oct(f.stat().st_mode & 0o777)})")
    except PKIError as exc:
        print(f"uharmony-pki: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

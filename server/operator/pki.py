"""The coordinator's keys and certificates (``uharmony-pki``), made with ``cryptography``.

    uharmony-pki init-ca      --dir pki [--name "Consortium CA"] [--days 1825] [--passphrase-file F]
    uharmony-pki signing-keys --dir pki [--passphrase-file F] --force   # new app- and model-signing keys
    uharmony-pki server-cert --dir pki --dns superlink.example.org --ip 10.0.0.5 [--days 825]
    uharmony-pki show        --dir pki

Layout of the coordinator's folder:
- ``ca.crt`` / ``ca.key``: the consortium CA (P-384), ``ca.key`` encrypted with the passphrase; it is needed
  only to issue certificates.
- ``superlink.crt`` / ``superlink.key``: TLS for the SuperLink and its gateway, signed by the CA, with the
  given DNS names / IPs and always ``localhost`` / ``127.0.0.1`` (the gateway and the coordinator's own
  ``flwr`` commands reach the SuperLink on the loopback interface).
- ``app-signing.key`` / ``app-signing.pub``: the coordinator's Ed25519 **app**-signing key. It signs the app
  the SuperNodes run (``uharmony-coordinator publish``; checked by Flower's ``--trusted-entities``), and
  nothing else. It is always encrypted with the passphrase (PKCS#8), so code running as the coordinator's
  service account (a ServerApp) cannot sign an app. ``trusted-entities.yaml`` (this key only) is what a
  hospital passes to its SuperNode.
- ``model-signing.key`` / ``model-signing.pub``: a separate Ed25519 key with which the ServerApp signs the
  manifests of the models it releases (it has to read it unattended, so it is not encrypted; 0600). It is
  not in ``trusted-entities.yaml``: it cannot sign an app. Hospitals verify models with ``model-signing.pub``.

The passphrase comes from ``--passphrase-file``, else ``UHARMONY_CA_PASSPHRASE``, else it is asked for on the
terminal; ``init-ca`` refuses to run without one.

Hospitals make their own SuperNode keys (``uharmony-site keygen``) and send only the public key;
the coordinator never holds them. Private keys are written 0600 and never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
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


def read_passphrase(path: Path | None, ask: str = "", confirm: bool = False) -> bytes | None:
    """The PKI passphrase: from a file, else ``UHARMONY_CA_PASSPHRASE``, else asked for on the terminal
    (``ask``: the prompt; ``confirm``: twice) when there is one, else none."""
    if path is not None:
        try:
            value = path.read_bytes().strip()
        except FileNotFoundError:
            raise PKIError(
                f"{path}: no such passphrase file. It is a file you create first, holding only the PKI passphrase "
                f"(8+ characters), readable by you alone, e.g. `(umask 077; openssl rand -base64 24 > {path})`; "
                "keep a copy off the machine (or leave out --passphrase-file to type the passphrase)"
            ) from None
        except OSError as exc:
            raise PKIError(f"{path}: cannot read the passphrase file ({exc.strerror})") from None
        if not value:
            raise PKIError(f"{path}: the passphrase file is empty")
        return value
    value = os.environ.get(PASSPHRASE_ENV, "").encode()
    if value or not ask or not sys.stdin.isatty():
        return value or None
    value = getpass.getpass(f"{ask}: ").encode()
    if confirm and getpass.getpass("again: ").encode() != value:
        raise PKIError("the two passphrases differ")
    return value or None


def _require(passphrase: bytes | None, what: str) -> bytes:
    if not passphrase:
        raise PKIError(f"{what} needs the PKI passphrase (--passphrase-file, {PASSPHRASE_ENV} or a terminal)")
    if len(passphrase) < 8:
        raise PKIError("the passphrase must have at least 8 characters")
    return passphrase


def init_ca(
    folder: Path,
    name: str = "U-Harmony consortium CA",
    days: int = 1825,
    force: bool = False,
    passphrase: bytes | None = None,
) -> Path:
    """Create the CA and the coordinator's signing keys, all encrypted with ``passphrase`` except the
    model-signing key. A folder holding half a CA is refused."""
    _check_days(days)
    passphrase = _require(passphrase, "init-ca")
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
    if force or not (folder / APP_KEY).exists():
        signing_keys(folder, passphrase, force=True)
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


APP_KEY, APP_PUB, MODEL_KEY, MODEL_PUB = "app-signing.key", "app-signing.pub", "model-signing.key", "model-signing.pub"
TRUSTED_ENTITIES = "trusted-entities.yaml"


def _openssh_public(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def signing_keys(folder: Path, passphrase: bytes, force: bool = False) -> Path:
    """The app-signing key (encrypted), the trusted-entities file hospitals get (that key only), and the
    separate model-signing key. Returns the model-signing key's path."""
    passphrase = _require(passphrase, "the app-signing key")
    app, model = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    app_pub, model_pub = _openssh_public(app), _openssh_public(model)
    model_priv = model.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write(folder / APP_KEY, _pem_key(app, passphrase), private=True, force=force)
    _write(folder / APP_PUB, app_pub + b" uharmony-app-signing\n", private=False, force=force)
    _write(folder / TRUSTED_ENTITIES, f"{public_key_id(app_pub)}: '{app_pub.decode()}'\n".encode(), False, force)
    _write(folder / MODEL_KEY, model_priv, private=True, force=force)
    _write(folder / MODEL_PUB, model_pub + b" uharmony-model-signing\n", private=False, force=force)
    return folder / MODEL_KEY


def load_app_signing_key(folder: Path, passphrase: bytes | None) -> ed25519.Ed25519PrivateKey:
    """The app-signing key, decrypted with ``passphrase``; an unencrypted one is refused."""
    path = folder / APP_KEY
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        old = (
            " (this folder predates separate app- and model-signing keys)" if (folder / "signing.key").exists() else ""
        )
        raise PKIError(
            f"{path}: not found{old}; run `uharmony-pki signing-keys --dir {folder} --force`, then give hospitals "
            f"the new {TRUSTED_ENTITIES} and {MODEL_PUB}"
        ) from None
    if b"ENCRYPTED" not in data:
        raise PKIError(f"{path} is not encrypted; replace it: `uharmony-pki signing-keys --dir {folder} --force`")
    if not passphrase:
        raise PKIError(f"{path} is encrypted: give its passphrase (--passphrase-file, {PASSPHRASE_ENV} or a terminal)")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        raise PKIError(f"{path}: wrong passphrase or not a PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PKIError(f"{path}: the app-signing key must be Ed25519")
    return key


def model_signing_key(folder: Path) -> Path:
    """The model-signing key's path (the ServerApp signs released models with it)."""
    path = folder / MODEL_KEY
    if not path.is_file():
        raise PKIError(f"{path}: not found; run `uharmony-pki signing-keys --dir {folder} --force`")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-pki", description="The coordinator's keys and certificates")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init-ca", help="create the consortium CA and the coordinator's signing keys")
    a.add_argument("--name", default="U-Harmony consortium CA")
    a.add_argument("--days", type=int, default=1825)
    s = sub.add_parser("server-cert", help="issue the SuperLink's TLS certificate")
    s.add_argument("--dns", action="append", default=[])
    s.add_argument("--ip", action="append", default=[])
    s.add_argument("--days", type=int, default=825)
    sub.add_parser("show", help="list what the PKI folder holds")
    sub.add_parser("signing-keys", help="make new app- and model-signing keys (and trusted-entities.yaml)")
    for sp in (a, s, sub.choices["show"], sub.choices["signing-keys"]):
        sp.add_argument("--dir", type=Path, required=True)
        sp.add_argument("--force", action="store_true", help="replace existing files")
        sp.add_argument(
            "--passphrase-file", type=Path, default=None, help=f"the PKI passphrase (or {PASSPHRASE_ENV}, or asked)"
        )
    args = p.parse_args(argv)
    try:
        new = args.cmd in ("init-ca", "signing-keys")
        passphrase = (
            read_passphrase(args.passphrase_file, "PKI passphrase", confirm=new) if args.cmd != "show" else None
        )
        give = f"give hospitals: {args.dir / 'ca.crt'}, {args.dir / TRUSTED_ENTITIES} and {args.dir / MODEL_PUB}"
        if args.cmd == "init-ca":
            path = init_ca(args.dir, args.name, args.days, args.force, passphrase)
            print(f"CA certificate: {path} (CA key and app-signing key encrypted)")
            print(give)
        elif args.cmd == "signing-keys":
            print(f"model-signing key: {signing_keys(args.dir, passphrase, args.force)}; app-signing key encrypted")
            print(give)
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

"""Consortium PKI for a TLS-secured, authenticated Flower deployment (``uharmony-pki``).

    uharmony-pki init-ca     --dir pki [--name "Consortium CA"] [--days 1825]
    uharmony-pki server-cert --dir pki --dns superlink.example.org --ip 10.0.0.5 [--days 825]
    uharmony-pki site-key    --dir pki --site hospital-a [--site hospital-b ...]
    uharmony-pki show        --dir pki

Layout: ``ca.crt``/``ca.key``, ``superlink.crt``/``superlink.key`` (TLS for the SuperLink, signed by the
CA, with the given DNS names/IPs as subject alternative names), ``sites/<site>/auth.key`` and
``auth.pub`` (the P-384 OpenSSH key pair a SuperNode authenticates with; the coordinator registers the
public key). Private keys are written 0600 and never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from uharmony.files import atomic_write

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class PKIError(ValueError):
    pass


def _write(path: Path, data: bytes, private: bool, force: bool) -> Path:
    if path.exists() and not force:
        raise PKIError(f"{path} exists; refusing to overwrite it (use --force to replace it)")
    return atomic_write(path, data, mode=0o600 if private else 0o644)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_days(days: int) -> None:
    if not 1 <= days <= 3650:
        raise PKIError(f"validity must be between 1 and 3650 days, got {days}")


def init_ca(folder: Path, name: str = "U-Harmony consortium CA", days: int = 1825, force: bool = False) -> Path:
    _check_days(days)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    if (folder / "ca.key").exists() and not force:
        raise PKIError(f"{folder / 'ca.key'} exists; refusing to overwrite it (use --force to replace it)")
    _write(folder / "ca.key", _pem_key(key), private=True, force=force)
    return _write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), private=False, force=force)


def _load_ca(folder: Path):
    try:
        cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PKIError(f"{exc.filename}: not found; run `uharmony-pki init-ca --dir {folder}` first") from None
    return cert, key


def server_cert(folder: Path, dns: list[str], ips: list[str], days: int = 825, force: bool = False) -> Path:
    _check_days(days)
    if not dns and not ips:
        raise PKIError("give at least one --dns name or --ip address for the SuperLink certificate")
    names: list[x509.GeneralName] = []
    for d in dns:
        if not DNS_NAME.match(d):
            raise PKIError(f"invalid DNS name {d!r}")
        names.append(x509.DNSName(d))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PKIError(f"invalid IP address {ip!r}") from None
    ca_cert, ca_key = _load_ca(folder)
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


def site_key(folder: Path, site: str, force: bool = False) -> Path:
    """P-384 key pair in OpenSSH format, as ``flower-supernode --auth-supernode-private-key`` expects."""
    if not SITE_NAME.match(site):
        raise PKIError(f"invalid site name {site!r}: use letters, digits, '.', '_' or '-' (max 63)")
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    site_dir = folder / "sites" / site
    if (site_dir / "auth.key").exists() and not force:
        raise PKIError(f"{site_dir / 'auth.key'} exists; refusing to overwrite it (use --force to replace it)")
    _write(site_dir / "auth.key", priv, private=True, force=force)
    _write(site_dir / "auth.pub", pub + f" {site}\n".encode(), private=False, force=force)
    return site_dir


def site_public_keys(folder: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted((folder / "sites").glob("*/auth.pub"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="uharmony-pki", description="Consortium PKI for the federation")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init-ca", help="create the consortium certificate authority")
    a.add_argument("--name", default="U-Harmony consortium CA")
    a.add_argument("--days", type=int, default=1825)
    s = sub.add_parser("server-cert", help="issue the SuperLink's TLS certificate")
    s.add_argument("--dns", action="append", default=[])
    s.add_argument("--ip", action="append", default=[])
    s.add_argument("--days", type=int, default=825)
    k = sub.add_parser("site-key", help="create a SuperNode authentication key pair per site")
    k.add_argument("--site", action="append", required=True)
    sub.add_parser("show", help="list what the PKI folder holds and the coordinator's registration commands")
    for sp in (a, s, k, sub.choices["show"]):
        sp.add_argument("--dir", type=Path, required=True)
        sp.add_argument("--force", action="store_true", help="replace existing files")
    args = p.parse_args(argv)
    try:
        if args.cmd == "init-ca":
            print(f"CA certificate: {init_ca(args.dir, args.name, args.days, args.force)}")
        elif args.cmd == "server-cert":
            print(f"SuperLink certificate: {server_cert(args.dir, args.dns, args.ip, args.days, args.force)}")
        elif args.cmd == "site-key":
            for site in args.site:
                print(f"site {site}: {site_key(args.dir, site, args.force)} (give auth.key to the site only)")
        keys = site_public_keys(args.dir)
        if args.cmd in ("site-key", "show") and keys:
            print("register the sites with the SuperLink (coordinator):")
            for site, pub in keys.items():
                print(f"  flwr supernode register {pub} <connection> --name {site}")
    except PKIError as exc:
        print(f"uharmony-pki: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

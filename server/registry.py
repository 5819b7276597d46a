"""The coordinator's site registry: which SuperNode key belongs to which site, and that site's domain.

``<state>/registry.json``::

    {"sites": {"hospital-a": {"domain": 0, "public_key": "ecdsa-sha2-nistp384 AAAA...", "max_cases": 400,
                              "revoked": false}}}

``uharmony-coordinator register`` / ``unregister`` write it; the ServerApp reads it (run-config key
``site-registry``) and admits a node only if the key it authenticated with is registered, for the site
and domain its profile names, declaring at most ``max_cases`` training cases (0 or absent: no cap beyond the
profile's own bound). A site is the key, not what a reply claims.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from uharmony.files import atomic_write

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_DOMAIN = 255
MAX_CASES = 100_000  # the most training cases a profile may declare at all (server/admission.py)


class RegistryError(ValueError):
    pass


def node_public_key(data: bytes | str):
    """A SuperNode's public key from OpenSSH text (a site's ``auth.pub``) or PEM (Flower's node info)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        key = (
            serialization.load_pem_public_key(raw)
            if raw.lstrip().startswith(b"-----")
            else serialization.load_ssh_public_key(b" ".join(raw.split()[:2]))
        )
    except (ValueError, IndexError, UnsupportedAlgorithm) as exc:
        raise RegistryError(f"not an OpenSSH or PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise RegistryError("a SuperNode key must be EC P-384 (make it with `uharmony-site keygen`)")
    return key


def is_public_key(data: bytes | str) -> bool:
    """Whether ``data`` is a public key at all (PEM, DER or OpenSSH: a node that authenticates with it), as
    opposed to the random bytes Flower's simulation engine gives its nodes."""
    raw = data.encode() if isinstance(data, str) else bytes(data or b"")
    for load in (
        serialization.load_pem_public_key,
        serialization.load_der_public_key,
        lambda b: serialization.load_ssh_public_key(b" ".join(b.split()[:2])),
    ):
        try:
            load(raw)
            return True
        except (ValueError, IndexError, TypeError, UnsupportedAlgorithm):
            continue
    return False


def _der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _max_cases(value, site: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CASES:
        raise RegistryError(f"max_cases of {site!r} must be an int in [0, {MAX_CASES}] (0: no cap), got {value!r}")
    return value


@dataclass(frozen=True)
class Entry:
    site: str
    domain: int
    public_key: str
    revoked: bool = False
    max_cases: int = 0  # the most training cases the site may declare (its weight's bound); 0: not registered


class SiteRegistry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sites: dict[str, Entry] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
                self.sites = {
                    name: Entry(
                        name,
                        int(e["domain"]),
                        str(e["public_key"]),
                        bool(e.get("revoked", False)),
                        _max_cases(e.get("max_cases", 0), name),
                    )
                    for name, e in doc["sites"].items()
                }
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
                raise RegistryError(f"{self.path}: not a site registry ({exc})") from None

    def save(self) -> None:
        doc = {
            "sites": {
                n: {"domain": e.domain, "public_key": e.public_key, "max_cases": e.max_cases, "revoked": e.revoked}
                for n, e in sorted(self.sites.items())
            }
        }
        atomic_write(self.path, json.dumps(doc, indent=2), mode=0o644)

    def add(self, site: str, domain: int, public_key_text: str, max_cases: int = 0) -> Entry:
        """Register ``site``'s key for ``domain``; ``max_cases``: the most training cases its profile may declare
        (0: no cap beyond the profile's own bound)."""
        max_cases = _max_cases(max_cases, site)
        if not SITE_NAME.fullmatch(site):
            raise RegistryError(f"site name {site!r}: use letters, digits, '.', '_' or '-' (at most 63)")
        if isinstance(domain, bool) or not isinstance(domain, int) or not 0 <= domain <= MAX_DOMAIN:
            raise RegistryError(f"domain of {site!r} must be an int in [0, {MAX_DOMAIN}], got {domain!r}")
        der = _der(node_public_key(public_key_text))
        for other in self.sites.values():
            if other.site != site and not other.revoked and _der(node_public_key(other.public_key)) == der:
                raise RegistryError(f"this key is already registered for site {other.site!r}")
        text = " ".join(public_key_text.split()[:2])
        self.sites[site] = Entry(site, domain, text, max_cases=max_cases)
        self.save()
        return self.sites[site]

    def revoke(self, site: str) -> Entry:
        if site not in self.sites:
            raise RegistryError(f"no site {site!r} in {self.path}")
        e = self.sites[site]
        self.sites[site] = Entry(e.site, e.domain, e.public_key, revoked=True, max_cases=e.max_cases)
        self.save()
        return self.sites[site]

    def lookup(self, public_key: bytes | str) -> Entry | None:
        """The active entry of a node's key (PEM or OpenSSH), or None."""
        try:
            der = _der(node_public_key(public_key))
        except RegistryError:
            return None
        return next(
            (e for e in self.sites.values() if not e.revoked and _der(node_public_key(e.public_key)) == der), None
        )

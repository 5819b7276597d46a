"""Signed apps: the coordinator signs the Flower app it runs, and hospitals run only apps it signed.

``publish`` builds this project into a Flower App Bundle (``flwr build`` of the code and config that
pyproject.toml's ``fab-include`` lists, staged apart from the working tree: ``server/operator/app_bundle.py``) and
signs it with the coordinator's Ed25519 app-signing key (encrypted: ``publish`` needs the passphrase) in
Flower's own format (8-byte timestamp + SHA-256 of the bundle). ``serve`` answers the SuperLink's app-fetch
requests on the coordinator's loopback interface, the same API the SuperLink uses for Flower Hub
(``FLWR_SUPERGRID_API_URL`` points it here), so a run started as ``flwr run @uharmony/uharmony-fl==0.1.0``
carries the signature. Each hospital's SuperNode checks it with
Flower's ``--trusted-entities`` and refuses any app the coordinator did not sign. The registry itself
serves only records whose signature verifies with the app-signing key's public half (a file planted in
``<state>/apps/`` is not served), and the SuperLink runs only published apps (``server/operator/guarded_superlink.py``
refuses an app submitted from a folder), so the coordinator's ServerApp runs only signed code too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import sys
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

from server.operator import app_bundle
from server.operator.pki import APP_PUB, load_app_signing_key, public_key_id
from uharmony.files import atomic_write

APPS = "apps"
SHA256 = re.compile(r"[0-9a-f]{64}")


def app_identity(app_dir: Path) -> tuple[str, str]:
    """(``@publisher/name``, version) of a Flower app folder, from its pyproject.toml."""
    doc = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return f"@{doc['tool']['flwr']['app']['publisher']}/{doc['project']['name']}", str(doc["project"]["version"])


def publish(app_dir: Path, pki: Path, state: Path, passphrase: bytes | None, flwr: str | None = None) -> dict:
    """Build and sign the app with the app-signing key (``passphrase`` decrypts it); returns its record (also
    written to ``<state>/apps/``)."""
    key = load_app_signing_key(pki, passphrase)  # before the build: a wrong passphrase costs nothing
    flwr = flwr or shutil.which("flwr") or str(Path(sys.executable).with_name("flwr"))
    app_id, version = app_identity(app_dir)
    content = app_bundle.build(app_dir, flwr)  # code and config only: a staged copy, not the working tree
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest, signed_at = hashlib.sha256(content).hexdigest(), int(time.time())
    signature = key.sign(create_message_to_sign(bytes.fromhex(digest), signed_at))
    record = {
        "app_id": app_id,
        "version": version,
        "sha256": digest,
        "verifications": [
            {
                "public_key_id": public_key_id(pub),
                "signature": base64.urlsafe_b64encode(signature).decode().rstrip("="),
                "signed_at": signed_at,
            }
        ],
    }
    folder = state / APPS
    atomic_write(folder / f"{digest}.fab", content, mode=0o600)
    atomic_write(folder / f"{digest}.json", json.dumps(record, indent=2), mode=0o600)
    return record


def app_public_key(pki: Path) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_ssh_public_key((pki / APP_PUB).read_bytes())
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{pki / APP_PUB}: cannot read the app-signing public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise RuntimeError(f"{pki / APP_PUB}: not an Ed25519 key")
    return key


def is_signed(record: dict, fab: bytes, key: ed25519.Ed25519PublicKey) -> bool:
    """``record`` is a signature of ``fab`` by ``key`` in Flower's format."""
    pub = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(fab).hexdigest()
    if record.get("sha256") != digest:
        return False
    for v in record.get("verifications", []):
        try:
            if v["public_key_id"] != public_key_id(pub):
                continue
            signature = base64.urlsafe_b64decode(v["signature"] + "=" * (-len(v["signature"]) % 4))
            key.verify(signature, create_message_to_sign(bytes.fromhex(digest), int(v["signed_at"])))
            return True
        except (KeyError, TypeError, ValueError, InvalidSignature):
            continue
    return False


def published(state: Path, key: ed25519.Ed25519PublicKey | None = None) -> list[dict]:
    """The published records, oldest first; with ``key``, only those whose bundle it signed."""
    records = []
    for path in (state / APPS).glob("*.json"):
        try:
            record = json.loads(path.read_text())
            fab = (state / APPS / f"{record['sha256']}.fab").read_bytes() if key is not None else b""
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if key is None or is_signed(record, fab, key):
            records.append(record)
    return sorted(records, key=lambda r: r["verifications"][0]["signed_at"])


def latest(state: Path, key: ed25519.Ed25519PublicKey | None = None) -> dict:
    apps = published(state, key)
    if not apps:
        raise RuntimeError(f"{state / APPS}: no published app; run `uharmony-coordinator publish` first")
    return apps[-1]


def serve(state: Path, port: int, key: ed25519.Ed25519PublicKey) -> ThreadingHTTPServer:
    """Answer the SuperLink's app fetches on 127.0.0.1:``port`` (0: a free port; in a daemon thread) with
    the apps ``key`` signed; returns the server."""
    apps = state / APPS

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") != "/hub/fetch-fab":
                return self._reply(404, b'{"detail": "not found"}')
            try:
                length = int(self.headers.get("Content-Length", 0))
                if not 0 <= length <= 65536:  # a negative length would read to the end of the stream
                    raise ValueError(f"Content-Length {length}")
                ask = json.loads(self.rfile.read(length))
                match = [
                    r
                    for r in published(state, key)
                    if r["app_id"] == ask.get("app_id") and ask.get("app_version") in (None, r["version"])
                ]
            except (ValueError, TypeError, AttributeError):
                return self._reply(400, b'{"detail": "bad request"}')
            if not match:
                return self._reply(404, json.dumps({"detail": f"{ask.get('app_id')} is not published"}).encode())
            rec = match[-1]
            host, port_ = self.server.server_address[:2]
            return self._reply(
                200,
                json.dumps(
                    {"fab_url": f"http://{host}:{port_}/fab/{rec['sha256']}", "verifications": rec["verifications"]}
                ).encode(),
            )

        def do_GET(self):  # noqa: N802
            digest = self.path.rsplit("/", 1)[-1]
            signed = {r["sha256"] for r in published(state, key)}
            if not self.path.startswith("/fab/") or not SHA256.fullmatch(digest) or digest not in signed:
                return self._reply(404, b'{"detail": "not found"}')
            return self._reply(200, (apps / f"{digest}.fab").read_bytes(), "application/octet-stream")

        def log_message(self, *args):  # keep the coordinator's log for the SuperLink
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

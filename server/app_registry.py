"""Signed apps: the coordinator signs the Flower app it runs, and hospitals run only apps it signed.

``publish`` builds this project into a Flower App Bundle (``flwr build``) and signs it with the
coordinator's Ed25519 key in Flower's own format (8-byte timestamp + SHA-256 of the bundle). ``serve``
answers the SuperLink's app-fetch requests on the coordinator's loopback interface, the same API the
SuperLink uses for Flower Hub (``FLWR_SUPERGRID_API_URL`` points it here), so a run started as
``flwr run @uharmony/uharmony-fl==0.1.0`` carries the signature. Each hospital's SuperNode checks it with
Flower's ``--trusted-entities`` and refuses any app the coordinator did not sign: a run submitted from a
plain folder carries no signature at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tempfile
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

from uharmony.files import atomic_write

from .pki import load_signing_key, public_key_id

APPS = "apps"
SHA256 = re.compile(r"[0-9a-f]{64}")


def app_identity(app_dir: Path) -> tuple[str, str]:
    """(``@publisher/name``, version) of a Flower app folder, from its pyproject.toml."""
    doc = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return f"@{doc['tool']['flwr']['app']['publisher']}/{doc['project']['name']}", str(doc["project"]["version"])


def publish(app_dir: Path, pki: Path, state: Path, flwr: str = "flwr") -> dict:
    """Build and sign the app; returns its record (also written to ``<state>/apps/``)."""
    app_id, version = app_identity(app_dir)
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([flwr, "build", "--app", str(app_dir.resolve())], cwd=tmp, capture_output=True, text=True)
        fabs = list(Path(tmp).glob("*.fab"))
        if res.returncode != 0 or len(fabs) != 1:
            raise RuntimeError(f"flwr build failed: {res.stdout}{res.stderr}")
        content = fabs[0].read_bytes()
    key = load_signing_key(pki)
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
    atomic_write(folder / f"{digest}.fab", content, mode=0o644)
    atomic_write(folder / f"{digest}.json", json.dumps(record, indent=2), mode=0o644)
    return record


def published(state: Path) -> list[dict]:
    return sorted(
        (json.loads(p.read_text()) for p in (state / APPS).glob("*.json")),
        key=lambda r: r["verifications"][0]["signed_at"],
    )


def latest(state: Path) -> dict:
    apps = published(state)
    if not apps:
        raise RuntimeError(f"{state / APPS}: no published app; run `uharmony-coordinator publish` first")
    return apps[-1]


def serve(state: Path, port: int) -> ThreadingHTTPServer:
    """Answer the SuperLink's app fetches on 127.0.0.1:``port`` (in a daemon thread); returns the server."""
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
                ask = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 65536)))
                match = [
                    r
                    for r in published(state)
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
            if (
                not self.path.startswith("/fab/")
                or not SHA256.fullmatch(digest)
                or not (apps / f"{digest}.fab").exists()
            ):
                return self._reply(404, b'{"detail": "not found"}')
            return self._reply(200, (apps / f"{digest}.fab").read_bytes(), "application/octet-stream")

        def log_message(self, *args):  # keep the coordinator's log for the SuperLink
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

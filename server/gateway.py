"""The coordinator's public face: nginx in front of the SuperLink, exposing the Fleet API only.

Open-source Flower 1.41 serves the Fleet API (SuperNodes), the Control API (registering nodes,
submitting runs) and the Runtime API on one HTTPS port, and the Control API has no authentication
unless Flower's account login is configured. So the SuperLink listens on the loopback interface only,
and this gateway, a standard reverse proxy, terminates TLS on the public address and forwards the
``/v1/fleet/`` routes and nothing else (anything else gets 403). Registering a node or submitting a run
is then possible only from the coordinator's own machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FLEET_PREFIX = "/v1/fleet/"


def nginx_binary() -> str:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise FileNotFoundError("the coordinator's gateway needs nginx (Debian/Ubuntu: apt-get install nginx)")
    return exe


def nginx_config(pki: Path, state: Path, host: str, port: int, superlink_port: int) -> Path:
    """Write ``<state>/gateway/nginx.conf``: TLS on ``host:port``, ``/v1/fleet/`` to the SuperLink on 127.0.0.1."""
    pki, root = pki.resolve(), (state / "gateway").resolve()
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(0o1777)  # nginx's workers may run as another user
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    conf = f"""# written by uharmony-coordinator start; regenerated at every start
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    client_max_body_size 2g;            # model updates travel through push-object
    server_tokens off;
    server {{
        listen {listen} ssl;
        ssl_certificate {pki}/superlink.crt;
        ssl_certificate_key {pki}/superlink.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location {FLEET_PREFIX} {{
            proxy_pass https://127.0.0.1:{superlink_port};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {pki}/ca.crt;
            proxy_ssl_name localhost;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
        location / {{
            return 403;                 # the Control and Runtime APIs are the coordinator's alone
        }}
    }}
}}
"""
    path = root / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_command(conf: Path) -> list[str]:
    return [nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"]

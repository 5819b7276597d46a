"""The coordinator's public face: nginx in front of the SuperLink, exposing the Fleet API only.

Open-source Flower 1.41 serves the Fleet API (SuperNodes), the Control API (registering nodes,
submitting runs) and the Runtime API on one HTTPS port, and the Control API has no authentication
unless Flower's account login is configured. So the SuperLink listens on the loopback interface only
(behind a local-account guard, ``server/operator/guarded_superlink.py``), and this gateway, a standard reverse proxy,
terminates TLS on the public address and forwards the ``/v1/fleet/`` routes and nothing else (anything
else gets 403).

Nothing reaches Flower before nginx has checked it (Flower reads a request's whole body before it
authenticates the node):

- bodies over ``MAX_BODY`` are refused (413): Flower sends arrays in chunks of at most 5 MiB
  (``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), so no legitimate request is larger; a body is buffered by nginx
  (``proxy_request_buffering on``) and goes to the SuperLink only once it is complete;
- per-address limits on concurrent requests and on the request rate (over them: 503, which Flower's
  SuperNodes retry), timeouts for the TLS handshake and the request header (``client_header_timeout``,
  which nginx 1.22 also applies to the handshake), the body and the upstream, and room for many more
  connections than a flood of half-open requests from one machine holds (``worker_connections``);
- the workers run as a dedicated account (the service account, or ``--gateway-user`` when started as
  root), never the shared ``nobody``, with private (0700) temporary folders.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

FLEET_PREFIX = "/v1/fleet/"
MAX_BODY = "8m"  # Flower's largest chunk (5 MiB) + protobuf framing, with margin
WORKER_CONNECTIONS = 8192  # per worker; two descriptors per proxied request
REQUESTS_PER_ADDRESS = 32  # concurrent requests from one address (a SuperNode uses a few): <= 256 MB of bodies
RATE = "100r/s"  # per address; a burst of BURST more is served without delay
BURST = 400
TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise FileNotFoundError("the coordinator's gateway needs nginx (Debian/Ubuntu: apt-get install nginx)")
    return exe


def private_temp(root: Path, account: pwd.struct_passwd) -> Path:
    """nginx's temporary folders under ``root``: 0700, owned by the workers' account."""
    root.mkdir(parents=True, exist_ok=True)
    for path in [root, *(root / sub for sub in TEMP_DIRS)]:
        path.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(0o700)
    return root


def nginx_config(
    pki: Path,
    state: Path,
    host: str,
    port: int,
    superlink_port: int,
    worker: pwd.struct_passwd | None = None,
    temp: Path | None = None,
) -> Path:
    """Write ``<state>/gateway/nginx.conf``: TLS on ``host:port``, ``/v1/fleet/`` to the SuperLink on 127.0.0.1.

    ``worker``: the account nginx's workers run as (default: this process's; written as nginx's ``user``
    only when started as root); ``temp``: its temporary folders (default ``<state>/gateway/tmp``)."""
    pki, root = pki.resolve(), (state / "gateway").resolve()
    root.mkdir(parents=True, exist_ok=True)
    worker = worker or pwd.getpwuid(os.geteuid())
    temp = private_temp((temp or root / "tmp").resolve(), worker)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    user = f"user {worker.pw_name} {_group(worker)};\n" if os.geteuid() == 0 else ""
    conf = f"""# written by uharmony-coordinator start; regenerated at every start
{user}worker_processes auto;
worker_rlimit_nofile {2 * WORKER_CONNECTIONS};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server_tokens off;
    client_max_body_size {MAX_BODY};       # Flower chunks arrays into <= 5 MiB objects
    client_body_buffer_size 1m;
    client_header_timeout 10s;             # also the TLS handshake's timeout in nginx 1.22
    client_body_timeout 30s;
    send_timeout 30s;
    keepalive_timeout 30s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=per_address:10m;
    limit_req_zone $binary_remote_addr zone=rate_per_address:10m rate={RATE};
    limit_conn_status 503;                 # Flower's SuperNodes retry on 503
    limit_req_status 503;
    server {{
        listen {listen} ssl;
        ssl_certificate {pki}/superlink.crt;
        ssl_certificate_key {pki}/superlink.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:10m;
        location {FLEET_PREFIX} {{
            limit_conn per_address {REQUESTS_PER_ADDRESS};
            limit_req zone=rate_per_address burst={BURST} nodelay;
            proxy_pass https://127.0.0.1:{superlink_port};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {pki}/ca.crt;
            proxy_ssl_name localhost;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_request_buffering on;    # the SuperLink sees only complete bodies
            proxy_buffering off;
            proxy_connect_timeout 5s;
            proxy_send_timeout 60s;
            proxy_read_timeout 120s;
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


def _group(account: pwd.struct_passwd) -> str:
    import grp

    try:
        return grp.getgrgid(account.pw_gid).gr_name
    except KeyError:
        return str(account.pw_gid)


def nginx_command(conf: Path) -> list[str]:
    return [nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"]

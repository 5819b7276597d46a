"""A hospital's ``site.toml`` (``uharmony-site start --config``): its keys, read and checked in one place.

``KEYS`` is the reference: ``docs/site-toml.md`` is generated from it (``scripts/reference_docs.py``; a test
keeps them equal). Every error names the file and the key. Relative paths are taken from the folder that
holds ``site.toml``.
"""

from __future__ import annotations

import math
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    name: str
    type: str  # string | path | file | integer | number | boolean
    default: str  # "required" or what applies when the key is absent
    meaning: str
    low: float | None = None  # numbers: the least value allowed
    high: float | None = None


KEYS = (
    Key(
        "site-id",
        "string",
        "required",
        "The site's name, exactly as the coordinator registered it (`register --site`).",
    ),
    Key(
        "domain-id",
        "integer",
        "0",
        "The site's domain, exactly as the coordinator registered it (`register --domain`): ask the coordinator.",
        0,
        255,
    ),  # fmt: skip
    Key(
        "data",
        "path",
        "required",
        "The site's data folder: one folder per case in BraTS naming "
        "(`<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`), optionally `site.json` (modalities, label protocol).",
    ),  # fmt: skip
    Key(
        "state-dir",
        "path",
        "`<data>/.uharmony-state`",
        "The site's own state: local parameters, harmonization "
        "statistics, preprocessed cases, the worker's socket. Made 0700; a restarted SuperNode resumes from it.",
    ),  # fmt: skip
    Key(
        "superlink",
        "string",
        "required",
        "The coordinator's gateway as `host:port` (`uharmony-coordinator start --host/--port`, 9092 by default).",
    ),  # fmt: skip
    Key("ca", "file", "required", "The consortium's CA certificate (`pki/ca.crt`, from the coordinator)."),
    Key(
        "trusted-entities",
        "file",
        "required",
        "The coordinator's app-signing public key "
        "(`pki/trusted-entities.yaml`): the SuperNode runs only apps it signed.",
    ),  # fmt: skip
    Key(
        "key",
        "file",
        "required",
        "The site's private key from `uharmony-site keygen` (`auth.key`, 0600); it "
        "never leaves the site, the coordinator registers `auth.pub`.",
    ),  # fmt: skip
    Key(
        "port",
        "integer",
        "a free loopback port, chosen at each start",
        "The SuperNode's local Runtime API "
        "(127.0.0.1, this site's account only). Set it only if a fixed port is needed; it must be free (several "
        "sites or a coordinator on one machine each need their own).",
        1,
        65535,
    ),  # fmt: skip
    Key("max-retries", "integer", "10", "Connection attempts to the SuperLink before the SuperNode gives up.", 0),
    Key("max-wait-time", "number", "no limit", "Seconds of retrying the connection before giving up.", 0),
    Key(
        "idle-poll",
        "number",
        "0.5",
        "Seconds the SuperNode waits before asking the SuperLink again after finding no message (Flower's own "
        "wait is 3 s); every round's messages reach the site this much later at most. 3 restores Flower's.",
        0.05,
        3,
    ),  # fmt: skip
    Key(
        "worker",
        "boolean",
        "true",
        "Run the long-lived site worker (`client/worker.py`) that keeps torch, MONAI "
        "and the site's code loaded between messages; false: each message's ClientApp does the work itself.",
    ),  # fmt: skip
    Key(
        "threads",
        "integer",
        "all cores",
        "CPU threads for the site's training and inference (torch's intra-op threads, `OMP_NUM_THREADS`). Set it "
        "when the machine is shared, e.g. by several sites or other work: threads beyond the free cores slow "
        "every step.",
        1,
        1024,
    ),  # fmt: skip
    Key(
        "rejoin-seconds",
        "number",
        "150",
        "After a lost connection or a crash: how long to keep starting the SuperNode again.",
        0,
    ),  # fmt: skip
    Key(
        "min-report-cases",
        "integer",
        "the run's `min-report-cases` (1)",
        "The site's own privacy floor: no "
        "Dice, HD95, gate metric or train loss over fewer cases leaves the site; a run cannot lower it "
        "(passed to the SuperNode as node config).",
        1,
    ),  # fmt: skip
)
BY_NAME = {k.name: k for k in KEYS}
REQUIRED = tuple(k.name for k in KEYS if k.default == "required")
PATHS = tuple(k.name for k in KEYS if k.type in ("path", "file"))


def _checked(path: Path, key: Key, value):
    where = f"{path}: [site] {key.name} = {value!r}"
    if key.type in ("string", "path", "file"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: must be a non-empty string")
    elif key.type == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
    else:
        kinds = (int,) if key.type == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"{where}: must be {'an integer' if key.type == 'integer' else 'a number'}")
        if not math.isfinite(value):  # TOML allows nan and inf
            raise ValueError(f"{where}: must be a finite number")
        if (key.low is not None and value < key.low) or (key.high is not None and value > key.high):
            bounds = f">= {key.low:g}" if key.high is None else f"in [{key.low:g}, {key.high:g}]"
            raise ValueError(f"{where}: must be {bounds}")
    return value


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no clash
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def load_site_config(path: Path) -> dict:
    """The ``[site]`` table of ``path``, checked: required keys, no unknown key, types and ranges, files that
    exist, a ``port`` that is free; relative paths made absolute from the file's folder."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read site config ({exc})") from None
    cfg = doc.get("site")
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: no [site] table (docs/site-toml.md)")
    unknown = sorted(set(cfg) - set(BY_NAME))
    if unknown:
        raise ValueError(f"{path}: [site] has unknown key(s) {unknown} (known: {sorted(BY_NAME)}; docs/site-toml.md)")
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ValueError(f"{path}: [site] lacks {missing}")
    cfg = {name: _checked(path, BY_NAME[name], value) for name, value in cfg.items()}
    for name in PATHS:
        if name in cfg:
            cfg[name] = str((path.parent / Path(cfg[name]).expanduser()).resolve())
            if BY_NAME[name].type == "file" and not Path(cfg[name]).is_file():
                raise ValueError(f"{path}: [site] {name} = {cfg[name]!r} is not a file")
    if "port" in cfg and not port_is_free(cfg["port"]):
        raise ValueError(
            f"{path}: [site] port = {cfg['port']}: 127.0.0.1:{cfg['port']} is already in use (another site's "
            "SuperNode, the coordinator or another program); choose a free port or leave `port` out"
        )
    return cfg

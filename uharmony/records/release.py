"""Release records: what a signature says about a model beyond its bytes, and the checks a hospital makes.

A manifest (``manifest.json``, signed as a whole by ``manifest.sig``) carries, beside each file's SHA-256,
a release record per model file (``"releases": {name: record}``; a bundle's manifest one ``"release"``)::

    {"format": 1, "file": "final_model.pt", "sha256": "…", "run-id": "…", "round": 16,
     "kind": "final" | "umsrep" | "checkpoint", "issued": "2026-12-07T10:00:00Z", "expires": "2027-12-07T10:00:00Z"}

so one signature binds the file to its run, round and kind, and to a validity period. ``check_release``
refuses a checkpoint unless asked for one, an expired release, a record for another file, and anything a
revocation list names (a file digest, or a whole run: ``run <run-id>``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = 1
KINDS = ("final", "umsrep", "checkpoint")
VALID_DAYS = {"final": 365, "umsrep": 365, "checkpoint": 30}  # how long a release stays valid unless the caller says
FINAL_NAME, UMSREP_NAME = "final_model.pt", "umsrep.pt"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class ReleaseError(ValueError):
    pass


def _utc(now: dt.datetime | None = None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)


def _stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def kind_of(name: str) -> str:
    """The release kind a checkpoint file's name implies: the run's final model, a phase-P artifact (UMS-Rep:
    the denoiser a hospital may run, the trunk a later run starts from), or anything else."""
    return {FINAL_NAME: "final", UMSREP_NAME: "umsrep"}.get(Path(name).name, "checkpoint")


def release_record(
    name: str,
    sha256: str,
    run_id: str,
    server_round: int,
    kind: str,
    valid_days: float | None = None,
    now: dt.datetime | None = None,
    **more,
) -> dict:
    """A release record for one file (``more``: further fields, e.g. a bundle's ``source-sha256``)."""
    if kind not in KINDS:
        raise ReleaseError(f"release kind must be one of {KINDS}, got {kind!r}")
    issued = _utc(now)
    days = VALID_DAYS[kind] if valid_days is None else float(valid_days)
    return {
        "format": FORMAT,
        "file": str(name),
        "sha256": str(sha256),
        "run-id": str(run_id),
        "round": int(server_round),
        "kind": kind,
        "issued": _stamp(issued),
        "expires": _stamp(issued + dt.timedelta(days=days)),
        **more,
    }


@dataclass
class Revocations:
    """A revocation list: file digests (a model file's, or the model a bundle was made from) and run ids."""

    digests: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)

    def reason(self, record: dict) -> str | None:
        for key in ("sha256", "source-sha256"):
            if str(record.get(key, "")).lower() in self.digests:
                return f"its {key} {record[key][:12]}... is revoked"
        if str(record.get("run-id", "")) in self.runs:
            return f"run {record['run-id']} is revoked"
        return None


def load_revocations(path: str | Path) -> Revocations:
    """A revocation list file: one entry per line, a 64-hex SHA-256 of a model file or ``run <run-id>``;
    ``#`` starts a comment. A line that is neither is an error naming it (a typo must not revoke nothing)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read the revocation list ({exc})") from None
    out = Revocations()
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        words = entry.split()
        if len(words) == 1 and _DIGEST.fullmatch(words[0].lower()):
            out.digests.add(words[0].lower())
        elif len(words) == 2 and words[0] == "run":
            out.runs.add(words[1])
        else:
            raise ReleaseError(f"{path}: line {number}: expected a SHA-256 or 'run <run-id>', got {entry[:80]!r}")
    return out


def check_release(
    record,
    name: str,
    sha256: str,
    allow_checkpoint: bool = False,
    revoked: Revocations | None = None,
    now: dt.datetime | None = None,
    accept: tuple[str, ...] = ("final",),
) -> dict:
    """``record`` if it is a well-formed release of the file ``name`` with digest ``sha256`` that may run
    now; else ReleaseError saying why (a kind outside ``accept`` only with ``allow_checkpoint``)."""
    where = f"{name}: release record"
    if not isinstance(record, dict):
        raise ReleaseError(f"{name}: no release record in its manifest (a model signed before release records?)")
    try:
        kind, file, digest = record["kind"], str(record["file"]), str(record["sha256"])
        issued = dt.datetime.strptime(record["issued"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        expires = dt.datetime.strptime(record["expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        int(record["round"])
        str(record["run-id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if Path(file).name != Path(name).name or digest != sha256:
        raise ReleaseError(f"{where} is for {file} ({digest[:12]}...), not this file ({sha256[:12]}...)")
    if kind not in KINDS:
        raise ReleaseError(f"{where}: unknown kind {kind!r}")
    if kind not in accept and not allow_checkpoint:
        wanted = " or ".join("its released final model" if k == "final" else f"a {k} release" for k in accept)
        raise ReleaseError(
            f"{name} is a {kind} of run {record['run-id']} (round {record['round']}), not {wanted}; "
            "give --allow-checkpoint to use it anyway"
        )
    t = _utc(now)
    if t >= expires:
        raise ReleaseError(f"{name}: its release expired on {record['expires']} (issued {record['issued']})")
    if issued > t + dt.timedelta(days=1):
        raise ReleaseError(f"{name}: its release is dated {record['issued']}, in the future")
    if revoked is not None and (why := revoked.reason(record)):
        raise ReleaseError(f"{name}: revoked: {why}")
    return record

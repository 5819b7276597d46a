"""What may leave a site about its files and cases: error texts with paths cut to file names, and for each
case it could not use a reason category and a keyed hash of its id (never the id, a file name or the
reason's text: case folders are often named after patients or accession numbers)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

_SEPARATOR = re.compile(r"[\\/]")
_LEAD = "'\"([{<="  # kept in front of a path
_TRAIL = "'\")]}>,;:."  # kept after a path's last part


def redact_paths(text: str) -> str:
    """``text`` with every file path cut to its last part (what leaves a site names no folder of it).

    A path is any whitespace-delimited word holding a ``/`` or ``\\`` (absolute, relative, a drive or a
    colon inside it), extended over the words after it up to the last word with a separator before a
    clause ends (a word ending in ``:``, ``,`` or ``;``): folder names with spaces (``/mnt/Smith John/MRN
    4711/x.nii.gz``) go whole."""
    words = re.split(r"(\s+)", text)
    out, i = [], 0
    while i < len(words):
        word = words[i]
        if i % 2 or not _SEPARATOR.search(word):
            out.append(word)
            i += 1
            continue
        end = i  # the last word of this path: the furthest word with a separator before the clause ends
        j = i
        while j < len(words) and not words[j].rstrip(_TRAIL[:2] + ")]}>").endswith((":", ",", ";")):
            j += 2
            if j < len(words) and _SEPARATOR.search(words[j]):
                end = j
        lead = word[: len(word) - len(word.lstrip(_LEAD))]
        last = words[end]
        core = last.rstrip(_TRAIL)
        tail = last[len(core) :]
        out.append(lead + _SEPARATOR.split(core)[-1] + tail)
        i = end + 1
    return "".join(out)


_CATEGORIES = (  # (pattern in a DataError's reason, category sent instead of the text)
    (r"not found|missing", "missing-file"),
    (r"empty file", "empty-file"),
    (r"truncated", "truncated-file"),
    (r"unreadable image header|unreadable affine", "bad-header"),
    (r"unreadable", "unreadable-image"),
    (r"more than [\d,]+\)|resample to", "too-large"),
    (r"voxel size", "bad-voxel-size"),
    (r"affine", "bad-affine"),
    (r"shape|expected a 3-D|4-D", "bad-shape"),
    (r"NaN or Inf", "non-finite"),
    (r"constant", "no-signal"),
    (r"label", "bad-labels"),
    (r"modalit|BraTS-named", "no-usable-modality"),
)
CASE_KEY_FILE = "case-id.key"


def skip_category(reason: str) -> str:
    """A fixed word for why a case was skipped (what may leave the site instead of the reason's text)."""
    for pattern, category in _CATEGORIES:
        if re.search(pattern, reason):
            return category
    return "invalid-data"


def error_category(exc: BaseException) -> str:
    """A DataError's category (from its ``reason``), else ``error-<exception type>``."""
    reason = getattr(exc, "reason", None)
    return skip_category(reason) if isinstance(reason, str) else f"error-{type(exc).__name__}"


def site_secret(state_dir: str | Path) -> bytes:
    """The site's key for hashing case ids (32 random bytes in ``<state>/case-id.key``, 0600, made once)."""
    from uharmony.files import PRIVATE_FILE, private_dir

    path = private_dir(state_dir) / CASE_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise ValueError(f"{path}: the case-id key is damaged (under 16 bytes); move it away") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def case_token(case_id: str, key: bytes) -> str:
    """A keyed hash of a case id (HMAC-SHA-256, 16 hex digits): the same case gives the same token at this
    site, and no one without the site's key can tell which case it is."""
    return hmac.new(key, str(case_id).encode(), hashlib.sha256).hexdigest()[:16]


def skipped_report(skipped: list[dict], key: bytes) -> list[str]:
    """What a site's replies say about its skipped cases: ``"<category> case <token>"`` per case, never a
    case id, a file name or free text (the site's own log has those)."""
    return [
        f"{s.get('category') or skip_category(str(s.get('reason', '')))} case "
        f"{case_token(str(s.get('case') or s.get('file') or ''), key)}"
        for s in skipped
    ]

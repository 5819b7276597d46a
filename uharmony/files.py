"""Small file helpers every package shares: atomic writes, JSONL records, SHA-256 digests, private folders, and
size-checked reads of small files from elsewhere.

Whatever these write is private to the user who runs them unless the caller asks otherwise: files 0600,
folders 0700, whatever the umask (a site's state folder holds scans, labels and per-case scores).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None], mode: int | None = None) -> Path:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a torn one.

    ``data``: bytes, text, or a function that writes a given temporary path (e.g. ``torch.save``).
    ``mode``: file permissions (default 0o600: private to this user, whatever the umask), set on the temporary
    file *before* any byte is written; 0o644 for what others must read (public keys, signatures).
    """
    path = Path(path)
    mode = PRIVATE_FILE if mode is None else mode
    if not path.parent.is_dir():
        private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o600)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)  # exactly ``mode``: the umask may have narrowed or (0o600 & ...) widened it
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return path


def private_dir(path: str | Path) -> Path:
    """``path`` as a folder only its owner can enter (0700), created with its parents if missing; an
    existing folder is narrowed to 0700 (parents that exist are left as they are)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, PRIVATE_DIR)
            _narrow(p, PRIVATE_DIR)  # the umask may have narrowed it further
        except FileExistsError:
            pass
    if path.is_dir():
        _narrow(path, PRIVATE_DIR)
    return path


def private_tree(path: str | Path) -> Path:
    """Narrow every folder under ``path`` to 0700 and every file to 0600 (a state folder written by an
    older version, or by a library that left the umask's modes)."""
    path = Path(path)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _narrow(Path(root) / name, PRIVATE_DIR)
        for name in files:
            _narrow(Path(root) / name, PRIVATE_FILE)
    if path.is_dir():
        _narrow(path, PRIVATE_DIR)
    return path


def _narrow(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if this user owns it (a symlink, or a file that vanished, is left alone)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) == mode:
        return
    os.chmod(path, mode)


SMALL_FILE = 1 << 20  # 1 MiB: the most a manifest, signature, config or site.json from elsewhere may have


def read_small(path: str | Path, limit: int = SMALL_FILE) -> bytes:
    """The bytes of a small file that may come from elsewhere (a bundle's manifest, signature or configs, a
    released model's manifest, a site's ``site.json`` or ``types.csv``): ``ValueError`` naming it, before anything
    is read, if it is not a plain file (a folder, a FIFO, a socket, a device) or is larger than ``limit``; at most
    ``limit`` bytes are ever read (a file that grows, or one whose size says 0 and streams). Opened without
    blocking, so a FIFO in its place cannot hang the reader. A missing file raises ``FileNotFoundError``; a file
    that cannot be opened (permissions, a socket) ``ValueError`` naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path}: cannot be opened ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a plain file")
        if info.st_size > limit:
            raise ValueError(f"{path}: {info.st_size} bytes, more than the {limit} such a file may have")
        chunks, got = [], 0
        while got <= limit:
            chunk = os.read(fd, limit + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > limit:
        raise ValueError(f"{path}: grew past the {limit} bytes such a file may have while it was read")
    return b"".join(chunks)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (empty if it does not exist); a torn last line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return records


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record; a new file is created 0600 (an existing one keeps its mode)."""
    path = Path(path)
    if not path.parent.is_dir():
        private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")

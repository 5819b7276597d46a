"""A message's model entries as one byte buffer and a manifest (no Flower import; the apps wrap it).

Flower moves every ``Array`` of a message as an object of its own, plus one chunk object per 5 MiB: a
model of 50 entries costs about 100 HTTP requests between a SuperNode and the SuperLink per message,
each one authenticated and stored. Packed, the entries travel as one ``uint8`` array (one object and a
chunk per 5 MiB) beside a JSON manifest, and the receiver restores the same ``{name: array}`` bit for bit.
Both ends pack only what they were addressed in: a site answers a packed message packed and a plain one
plain, so either end may run without packing.

The manifest is ``[[name, dtype, shape], ...]`` in buffer order; the offsets follow from it. Nothing is
unpickled, and a manifest from elsewhere is checked whole before a byte is read: a list of at most
``MAX_ENTRIES`` entries, unique non-empty names, dtypes from ``DTYPES``, shapes of at most ``MAX_DIMS``
non-negative integers, sizes adding up to the buffer's length exactly. Any violation is a
:class:`WireError` naming the entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from . import protocol as P

PACKED = "packed"  # the one entry of a packed ArrayRecord
MANIFEST = "manifest"  # its manifest (JSON) in the message's ``protocol.WIRE`` ConfigRecord
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
MAX_ENTRIES = 100_000
MAX_DIMS = 8
MAX_NAME = 500


class WireError(ValueError):
    """A packed record or its manifest is malformed."""


def pack(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """``{name: array}`` -> (one little-endian ``uint8`` buffer, manifest JSON)."""
    entries, parts = [], []
    for name, array in arrays.items():
        a = np.asarray(array)
        if a.dtype.name not in DTYPES:
            raise WireError(f"entry {name!r}: dtype {a.dtype} cannot be packed (allowed: {', '.join(DTYPES)})")
        entries.append([str(name), a.dtype.name, [int(n) for n in a.shape]])
        parts.append(np.ascontiguousarray(a.reshape(-1), dtype=a.dtype.newbyteorder("<")).view(np.uint8))
    buffer = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return buffer, json.dumps(entries, separators=(",", ":"))


def _entries(manifest: str) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """The checked manifest: (name, dtype, shape, byte count) per entry."""
    if not isinstance(manifest, str):
        raise WireError(f"manifest: expected a JSON string, got {type(manifest).__name__}")
    try:
        raw = json.loads(manifest)
    except ValueError as exc:
        raise WireError(f"manifest: not JSON ({exc})") from None
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise WireError(f"manifest: expected a list of at most {MAX_ENTRIES} entries")
    out, seen = [], set()
    for i, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 3):
            raise WireError(f"manifest entry {i}: expected [name, dtype, shape]")
        name, dtype, shape = entry
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or name in seen:
            raise WireError(f"manifest entry {i}: name {str(name)[:80]!r} is empty, too long, repeated or not text")
        if dtype not in DTYPES:
            raise WireError(f"manifest entry {name!r}: dtype {str(dtype)[:40]!r} not allowed")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_DIMS
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        ):
            raise WireError(f"manifest entry {name!r}: shape must be at most {MAX_DIMS} non-negative integers")
        seen.add(name)
        dt = np.dtype(dtype).newbyteorder("<")
        out.append((name, dt, tuple(shape), int(np.prod(shape, dtype=object)) * dt.itemsize))
    return out


def unpack(buffer: np.ndarray, manifest: str) -> dict[str, np.ndarray]:
    """The ``{name: array}`` that :func:`pack` packed (each array its own copy, native byte order)."""
    if not isinstance(buffer, np.ndarray) or buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise WireError(f"packed buffer: expected a 1-D uint8 array, got {getattr(buffer, 'dtype', type(buffer))}")
    entries = _entries(manifest)
    total = sum(n for *_, n in entries)
    if total != buffer.size:
        raise WireError(f"packed buffer: the manifest describes {total} bytes, the buffer holds {buffer.size}")
    out, offset = {}, 0
    for name, dt, shape, nbytes in entries:
        chunk = buffer[offset : offset + nbytes]
        out[name] = chunk.view(dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)
        offset += nbytes
    return out


def unpack_record(record: Mapping[str, object], manifest: str) -> dict[str, np.ndarray]:
    """Unpack a packed ArrayRecord (given as its mapping ``{PACKED: Array}``): exactly one entry, named
    ``PACKED``, whose ``numpy()`` is the buffer."""
    if set(record) != {PACKED}:
        names = ", ".join(sorted(map(str, record)))[:200]
        raise WireError(f"packed record: expected the single entry {PACKED!r}, got [{names}]")
    return unpack(record[PACKED].numpy(), manifest)


def unpack_message_records(array_records: Mapping, config_records: Mapping) -> dict[str, np.ndarray]:
    """The arrays of a packed message, given its ``array_records`` and ``config_records`` mappings (both
    apps' one check: the ``WIRE`` manifest needs a packed ``ARRAYS`` record)."""
    if P.ARRAYS not in array_records:
        raise WireError(f"a {P.WIRE!r} manifest without an {P.ARRAYS!r} record")
    return unpack_record(array_records[P.ARRAYS], config_records[P.WIRE].get(MANIFEST))

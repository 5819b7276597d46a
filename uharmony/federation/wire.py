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

An array that arrives as NumPy's ``.npy`` bytes (Flower's ``Array``) is read with :func:`read_npy`: its header
is parsed first, and the array is allocated only when its shape and dtype are the expected ones and the
bytes that follow the header hold exactly what it declares (``numpy.load`` allocates what the header
declares before reading: a header of 2**40 floats is a ``MemoryError``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping

import numpy as np

from uharmony import protocol as P

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


NPY = "numpy.ndarray"  # the serialization type (Flower's ``Array.stype``) of NumPy's .npy bytes


def npy_header(data, name: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, Fortran order, offset of the data) of NumPy ``.npy`` bytes, without reading the data: a
    version 1.0 or 2.0 header of at most 10,000 bytes, a dtype from ``DTYPES``, at most ``MAX_DIMS`` dimensions,
    and exactly as many bytes after the header as it declares; anything else is a :class:`WireError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"{name}: expected the bytes of a NumPy array, got {type(data).__name__}")
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dt = read(stream)
    except (ValueError, TypeError, SyntaxError, OverflowError) as exc:  # numpy's header parser: ValueError
        raise WireError(f"{name}: not a NumPy array ({str(exc)[:200]})") from None
    if dt.hasobject or dt.name not in DTYPES:
        raise WireError(f"{name}: dtype {str(dt)[:40]!r} not allowed (allowed: {', '.join(DTYPES)})")
    if len(shape) > MAX_DIMS:
        raise WireError(f"{name}: at most {MAX_DIMS} dimensions, got {len(shape)}")
    nbytes, offset = math.prod(shape) * dt.itemsize, stream.tell()  # Python integers: no overflow
    if nbytes != len(data) - offset:
        raise WireError(
            f"{name}: the header declares {tuple(shape)} {dt.name} ({nbytes} bytes), "
            f"{len(data) - offset} bytes follow it"
        )
    return tuple(shape), dt, bool(fortran_order), offset


def read_npy(data, name: str, dtype: np.dtype | str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array in NumPy ``.npy`` bytes (its own copy, native byte order), allocated only after its header
    passed :func:`npy_header` and, when given, declares ``dtype`` and ``shape``; else a :class:`WireError`
    naming ``name``."""
    found, dt, fortran_order, offset = npy_header(data, name)
    if (shape is not None and found != tuple(shape)) or (dtype is not None and dt != np.dtype(dtype)):
        want_shape = tuple(shape) if shape is not None else found
        want_dtype = np.dtype(dtype).name if dtype is not None else dt.name
        raise WireError(f"{name}: shape/dtype {found}/{dt.name} instead of {want_shape}/{want_dtype}")
    flat = np.frombuffer(data, dtype=dt, count=math.prod(found), offset=offset)
    array = flat.reshape(found[::-1]).T if fortran_order else flat.reshape(found)
    return array.astype(dt.newbyteorder("="), copy=True)


def _buffer(entry, size: int) -> np.ndarray:
    """The packed buffer from a record's entry: NumPy's .npy bytes (a Flower ``Array``), a 1-D ``uint8`` array
    of ``size`` bytes checked from its header before it is read; or an array already."""
    if isinstance(entry, np.ndarray):
        return entry
    if getattr(entry, "stype", None) != NPY:
        stype = str(getattr(entry, "stype", type(entry).__name__))[:40]
        raise WireError(f"packed buffer: not a NumPy-serialized array (stype {stype!r})")
    data = getattr(entry, "data", None)
    shape, dt, _, _ = npy_header(data, "packed buffer")
    if dt != np.uint8 or len(shape) != 1:
        raise WireError(f"packed buffer: expected a 1-D uint8 array, got {dt.name} of shape {shape}")
    if shape[0] != size:
        raise WireError(f"packed buffer: the manifest describes {size} bytes, the buffer holds {shape[0]}")
    return read_npy(data, "packed buffer", np.uint8, (size,))


def unpack_record(record: Mapping[str, object], manifest: str) -> dict[str, np.ndarray]:
    """Unpack a packed ArrayRecord (given as its mapping ``{PACKED: Array}``): exactly one entry, named
    ``PACKED``, a 1-D ``uint8`` array of the manifest's size exactly (checked from its header first)."""
    if set(record) != {PACKED}:
        names = ", ".join(sorted(map(str, record)))[:200]
        raise WireError(f"packed record: expected the single entry {PACKED!r}, got [{names}]")
    total = sum(n for *_, n in _entries(manifest))
    return unpack(_buffer(record[PACKED], total), manifest)


def unpack_message_records(array_records: Mapping, config_records: Mapping) -> dict[str, np.ndarray]:
    """The arrays of a packed message, given its ``array_records`` and ``config_records`` mappings (both
    apps' one check: the ``WIRE`` manifest needs a packed ``ARRAYS`` record)."""
    if P.ARRAYS not in array_records:
        raise WireError(f"a {P.WIRE!r} manifest without an {P.ARRAYS!r} record")
    return unpack_record(array_records[P.ARRAYS], config_records[P.WIRE].get(MANIFEST))

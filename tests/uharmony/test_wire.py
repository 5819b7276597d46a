"""uharmony.federation.wire: a model's entries as one buffer and a manifest, and every crafted manifest refused."""

import io
import json

import numpy as np
import pytest
from flwr.app import Array

from uharmony.federation import wire


def _state():
    rng = np.random.default_rng(0)
    return {
        "enc.conv.weight": rng.normal(size=(8, 1, 3, 3, 3)).astype(np.float32),
        "enc.norm.count": np.array(7, np.int64),
        "head.gate.tau": np.array([0.5], np.float64),
        "empty": np.zeros((0, 4), np.float16),
        "mask": np.array([True, False, True]),
    }


def test_pack_then_unpack_is_bit_exact_and_keeps_order_dtypes_and_shapes():
    state = _state()
    buffer, manifest = wire.pack(state)
    assert buffer.dtype == np.uint8 and buffer.size == sum(a.nbytes for a in state.values())
    back = wire.unpack(buffer, manifest)
    assert list(back) == list(state)
    for k, a in state.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape and np.array_equal(back[k], a)
        assert back[k].flags.writeable and not np.shares_memory(back[k], buffer)
    assert wire.unpack(*wire.pack({})) == {}


def test_big_endian_input_is_packed_little_endian():
    a = np.arange(5, dtype=">f4")
    back = wire.unpack(*wire.pack({"x": a}))
    assert np.array_equal(back["x"], a) and back["x"].dtype == np.float32


def test_an_unsupported_dtype_is_refused_at_packing():
    with pytest.raises(wire.WireError, match="'z'.*complex"):
        wire.pack({"z": np.zeros(2, np.complex64)})


def _manifest(entries):
    return json.dumps(entries)


@pytest.mark.parametrize(
    "manifest, size, match",
    [
        ("not json", 4, "not JSON"),
        (_manifest({"a": 1}), 4, "a list"),
        (_manifest([["a", "float32"]]), 4, "entry 0"),
        (_manifest([["", "float32", [1]]]), 4, "empty, too long, repeated"),
        (_manifest([["a", "float32", [1]], ["a", "float32", [1]]]), 8, "repeated"),
        (_manifest([["a", "object", [1]]]), 8, "'a': dtype 'object' not allowed"),
        (_manifest([["a", "float32", [-1]]]), 4, "'a': shape"),
        (_manifest([["a", "float32", [True]]]), 4, "'a': shape"),
        (_manifest([["a", "float32", [1] * 9]]), 4, "'a': shape"),
        (_manifest([["a", "float32", [2]]]), 4, "describes 8 bytes, the buffer holds 4"),
        (_manifest([["a", "float32", [10**12, 10**12]]]), 4, "the buffer holds 4"),
        (_manifest([["a", "float32", [1]]]), 5, "describes 4 bytes, the buffer holds 5"),
    ],
)
def test_a_crafted_manifest_is_refused_naming_the_entry(manifest, size, match):
    with pytest.raises(wire.WireError, match=match):
        wire.unpack(np.zeros(size, np.uint8), manifest)


def test_a_buffer_that_is_not_bytes_and_a_record_with_other_entries_are_refused():
    with pytest.raises(wire.WireError, match="1-D uint8"):
        wire.unpack(np.zeros(4, np.float32), "[]")
    arr = Array(np.zeros(4, np.uint8))  # what a message carries: NumPy's .npy bytes
    with pytest.raises(wire.WireError, match=r"single entry 'packed', got \[extra, packed\]"):
        wire.unpack_record({"packed": arr, "extra": arr}, "[]")
    assert wire.unpack_record({"packed": arr}, _manifest([["a", "int32", [1]]]))["a"].tolist() == [0]
    torch_serialized = Array(dtype="uint8", shape=(4,), stype="torch", data=bytes(4))
    with pytest.raises(wire.WireError, match="not a NumPy-serialized array"):
        wire.unpack_record({"packed": torch_serialized}, _manifest([["a", "int32", [1]]]))


def _npy(array=None, header=None, tail=b"") -> bytes:
    """.npy bytes of ``array``, or a bare header (dict) followed by ``tail``."""
    out = io.BytesIO()
    if header is None:
        np.save(out, array, allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue() + tail


def test_read_npy_returns_a_writable_copy_in_native_order_and_fortran_arrays_too():
    a = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    back = wire.read_npy(_npy(a), "x", np.dtype(">f4"), (2, 3, 4))
    assert np.array_equal(back, a) and back.dtype == np.float32 and back.flags.writeable
    f = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    assert np.array_equal(wire.read_npy(_npy(f), "f"), f)


FOUR_TIB = {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (_npy(header=FOUR_TIB), {}, r"x: the header declares \(1099511627776,\) float32 \(4398046511104 bytes\), 0"),
        (_npy(header=FOUR_TIB), {"dtype": np.float32, "shape": (3,)}, "bytes"),  # before any comparison allocates
        (_npy(header={"descr": "<f4", "fortran_order": False, "shape": (2,)}, tail=bytes(4)), {}, "8 bytes.*4 bytes"),
        (_npy(np.zeros(3, np.float32)), {"dtype": np.float32, "shape": (4,)}, r"shape/dtype \(3,\)/float32 instead"),
        (_npy(np.zeros(3, np.float32)), {"dtype": np.float64, "shape": (3,)}, "instead of .3,./float64"),
        (_npy(np.zeros(2, np.complex64)), {}, "dtype .*not allowed"),
        (_npy(header={"descr": "|O", "fortran_order": False, "shape": (1,)}, tail=bytes(8)), {}, "not allowed"),
        (_npy(header={"descr": "<f4", "fortran_order": False, "shape": (1,) * 9}, tail=bytes(4)), {}, "dimensions"),
        (b"PK\x03\x04 a zip file", {}, "not a NumPy array"),
        (b"\x93NUMPY\x01\x00\xff\xff{'descr': 'eval(1)'}", {}, "not a NumPy array"),
        ("text", {}, "expected the bytes"),
    ],
)
def test_read_npy_checks_the_header_before_allocating(data, kwargs, match):
    with pytest.raises(wire.WireError, match=match):
        wire.read_npy(data, "x", **kwargs)


def test_a_packed_buffer_whose_header_declares_a_terabyte_is_refused_from_its_header():
    """Issue 29, F5: numpy.load allocates what a header declares before reading (MemoryError)."""
    lying = Array(dtype="uint8", shape=(1,), stype="numpy.ndarray", data=_npy(header={**FOUR_TIB, "descr": "|u1"}))
    with pytest.raises(wire.WireError, match=r"packed buffer: the header declares \(1099511627776,\) uint8"):
        wire.unpack_record({"packed": lying}, _manifest([["a", "uint8", [1]]]))

"""uharmony.wire: a model's entries as one buffer and a manifest, and every crafted manifest refused."""

import json

import numpy as np
import pytest

from uharmony import wire


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

    class Arr:
        def numpy(self):
            return np.zeros(4, np.uint8)

    with pytest.raises(wire.WireError, match=r"single entry 'packed', got \[extra, packed\]"):
        wire.unpack_record({"packed": Arr(), "extra": Arr()}, "[]")
    assert wire.unpack_record({"packed": Arr()}, _manifest([["a", "int32", [1]]]))["a"].tolist() == [0]

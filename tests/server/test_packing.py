"""Packed model entries between the apps (server.grids.PackingGrid, client.packing): the same arrays
arrive bit for bit, and a malformed packed reply is rejected with its reason and never raises."""

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.packing import packed_arrays
from server.grids import packed, unpacked
from server.replies import ReplyChecker
from tests.server.conftest import reply, request, update
from uharmony import protocol as P
from uharmony.federation import wire

MEMBERS = {7: {"site": "s7", "domain": 0, "train_cases": 6}}


def _train_request(state, node=7) -> Message:
    msg = request(node)
    msg.content[P.ARRAYS], msg.content[P.CONFIG] = ArrayRecord(state), ConfigRecord({P.LR: 0.1})
    return msg


def _site(sent_back):
    """A site handler that checks what it received and answers with ``sent_back(received)``."""

    def handler(msg, context):
        received = msg.content.array_records[P.ARRAYS].to_torch_state_dict()
        assert P.WIRE not in msg.content.config_records
        return reply(sent_back(received), node=msg.metadata.dst_node_id)

    return handler


def test_a_round_trip_restores_every_entry_bit_for_bit_and_each_record_is_packed_once(setup):
    roles, state = setup
    a, b = _train_request(state, 7), _train_request({}, 8)
    b.content = a.content  # Flower's strategies give every message one RecordDict
    out = packed([a, b])
    assert list(a.content.array_records[P.ARRAYS]) == [wire.PACKED] and P.WIRE in a.content.config_records
    assert a.content.array_records[P.ARRAYS] is b.content.array_records[P.ARRAYS] and out == [a, b]
    assert (
        wire.unpack_record(b.content.array_records[P.ARRAYS], b.content.config_records[P.WIRE][wire.MANIFEST]).keys()
        == state.keys()
    )  # packed once
    sent = update(roles, state, 0, 0.25)
    answer = packed_arrays(a, None, _site(lambda received: {**sent}))
    assert list(answer.content.array_records[P.ARRAYS]) == [wire.PACKED]  # the reply leaves packed
    assert list(a.content.array_records[P.ARRAYS]) == [wire.PACKED]  # the request as received is untouched
    back = unpacked(answer).content.array_records[P.ARRAYS].to_torch_state_dict()
    assert back.keys() == sent.keys() and all(torch.equal(back[k], v) for k, v in sent.items())
    assert P.WIRE not in answer.content.config_records
    accepted, parsed, rejected = ReplyChecker(roles, state, MEMBERS).screen([answer])
    assert len(accepted) == 1 and rejected == []


def test_a_plain_message_is_answered_plain(setup):
    roles, state = setup
    msg = _train_request(state)
    answer = packed_arrays(msg, None, _site(lambda received: update(roles, state, 0, 0.1)))
    assert wire.PACKED not in answer.content.array_records[P.ARRAYS] and unpacked(answer) is answer


def _tampered(kind: str, state) -> Message:
    msg = reply(state)
    buffer, manifest = wire.pack({k: v.numpy() for k, v in msg.content.array_records[P.ARRAYS].items()})
    content = msg.content
    content[P.ARRAYS] = ArrayRecord({wire.PACKED: Array(buffer)})
    content[P.WIRE] = ConfigRecord({wire.MANIFEST: manifest})
    if kind == "short":
        content[P.ARRAYS] = ArrayRecord({wire.PACKED: Array(buffer[:-4])})
    elif kind == "not-json":
        content[P.WIRE] = ConfigRecord({wire.MANIFEST: "{"})
    elif kind == "no-manifest":
        content[P.WIRE] = ConfigRecord({})
    elif kind == "two-entries":
        content[P.ARRAYS] = ArrayRecord({wire.PACKED: Array(buffer), "extra": Array(np.zeros(1, np.float32))})
    elif kind == "no-arrays":
        del content[P.ARRAYS]
    elif kind == "floats":
        content[P.ARRAYS] = ArrayRecord({wire.PACKED: Array(buffer.view(np.float32))})
    return msg


@pytest.mark.parametrize(
    "kind, words",
    [
        ("short", "the buffer holds"),
        ("not-json", "not JSON"),
        ("no-manifest", "expected a JSON string"),
        ("two-entries", "single entry 'packed'"),
        ("no-arrays", "without an 'arrays' record"),
        ("floats", "1-D uint8"),
    ],
)
def test_a_malformed_packed_reply_is_rejected_with_its_reason(setup, kind, words):
    roles, state = setup
    bad = unpacked(_tampered(kind, update(roles, state, 0, 0.1)))
    assert bad.has_error() and "packed arrays" in bad.error.reason and words in bad.error.reason
    good = reply(update(roles, state, 0, 0.1), node=7)
    accepted, parsed, rejected = ReplyChecker(roles, state, {**MEMBERS, 8: {**MEMBERS[7], "site": "s8"}}).screen(
        [good, bad]
    )
    assert [r.site for r in parsed] == ["s7"] and words in rejected[0]["reason"]


@pytest.mark.parametrize("kind", ["short", "not-json", "two-entries", "no-arrays"])
def test_a_site_answers_a_malformed_packed_request_with_an_error_and_runs_nothing(setup, kind):
    roles, state = setup
    msg = _tampered(kind, update(roles, state, 0, 0.1))
    request_msg = _train_request({})
    request_msg.content = RecordDict(
        {k: v for k, v in msg.content.items() if k in (P.ARRAYS, P.WIRE)} | {P.CONFIG: ConfigRecord({})}
    )

    def never(msg, context):
        raise AssertionError("the handler ran")

    answer = packed_arrays(request_msg, None, never)
    assert answer.has_error() and answer.error.reason.startswith("packed arrays: ")


def test_a_packed_buffer_whose_header_lies_is_an_error_reply(setup):
    """Issue 29, F5: a packed buffer whose .npy header declares 2**40 bytes (numpy.load would allocate them
    first: MemoryError, the run ended) is read from its header: an error reply naming it, the round goes on."""
    roles, state = setup
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (2**40,)})
    msg = reply(update(roles, state, 0, 0.1))
    msg.content[P.ARRAYS] = ArrayRecord(
        {wire.PACKED: Array(dtype="uint8", shape=(1,), stype="numpy.ndarray", data=header.getvalue())}
    )
    msg.content[P.WIRE] = ConfigRecord({wire.MANIFEST: '[["x","uint8",[1]]]'})
    bad = unpacked(msg)
    assert bad.has_error() and bad.error.reason == (
        "packed arrays: packed buffer: the header declares (1099511627776,) uint8 (1099511627776 bytes), "
        "0 bytes follow it"
    )
    good = reply(update(roles, state, 0, 0.1), node=8, site="s8")
    members = {**MEMBERS, 8: {**MEMBERS[7], "site": "s8"}}
    _, parsed, rejected = ReplyChecker(roles, state, members).screen([bad, good])
    assert [r.site for r in parsed] == ["s8"] and "header declares" in rejected[0]["reason"]

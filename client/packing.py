"""The ClientApp's mod for packed model entries (``uharmony.federation.wire``): a message whose ``ARRAYS`` record
arrives packed is handed to the handlers with its arrays restored, and its reply's ``ARRAYS`` leave
packed; a plain message is answered plain. A malformed packed record is answered with an error naming
the problem, before any handler runs."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from uharmony import protocol as P
from uharmony.federation import wire

WIRE_ERROR = 10  # the Error code of a message whose packed arrays could not be read


def packed_arrays(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    if not msg.has_content() or P.WIRE not in msg.content.config_records:
        return call_next(msg, context)
    content = RecordDict(dict(msg.content))  # the message as received stays as it is
    try:
        arrays = wire.unpack_message_records(content.array_records, content.config_records)
    except (wire.WireError, ValueError) as exc:
        return Message(Error(WIRE_ERROR, f"packed arrays: {exc}"), reply_to=msg)
    content[P.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    del content[P.WIRE]
    reply = call_next(Message(content=content, metadata=msg.metadata), context)
    if reply.has_content() and P.ARRAYS in reply.content.array_records:
        buffer, manifest = wire.pack({k: v.numpy() for k, v in reply.content.array_records[P.ARRAYS].items()})
        reply.content[P.ARRAYS] = ArrayRecord({wire.PACKED: Array(buffer)})
        reply.content[P.WIRE] = ConfigRecord({wire.MANIFEST: manifest})
    return reply

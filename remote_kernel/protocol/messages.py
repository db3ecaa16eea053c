"""Message kinds and request opcodes. These numbers are the wire format: never renumber.

A message is a msgpack array whose first item is its kind:

    [REQUEST, seq, opcode, arg...]    expects a REPLY or an EXCEPTION with the same seq
    [REPLY, seq, value]
    [EXCEPTION, seq, exception]       exception is an EXC ext value (see exceptions.py)
    [NOTIFY, opcode, arg...]          no reply (releases, cancel)

A message carrying large buffers (over ``OOB_MIN`` bytes) is preceded by a BUFFERS frame
``[BUFFERS, n, kinds]`` and n raw frames, each a buffer's bytes as they are; in the
message, a BUFFER ext value stands for buffer i. ``kinds`` is a bin of n bytes, byte i 1
when buffer i is a ``bytes`` value and 0 when it is an array's data (anything else is a
protocol error); a BUFFERS frame without it (``[BUFFERS, n]``, older senders) means all 0.
The raw bytes are never copied into msgpack and are received straight into their final
allocation: a bytes value into its ``bytes`` object, an array's data into a writable
buffer. The kinds are a hint for that allocation only: a buffer used otherwise than
announced is copied into the right type. A reply's BUFFERS frame also names the reply
(``[BUFFERS, n, kinds, seq]``): a caller that offered memory for its reply (an obtain's READ
offers the part of the destination its chunk fills) receives a bytes buffer of exactly that
size there; the next message must then be that reply, else the connection is dropped.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from remote_kernel.errors import ProtocolError


class Kind(IntEnum):
    REQUEST = 0
    REPLY = 1
    EXCEPTION = 2
    NOTIFY = 3
    BUFFERS = 4


class Op(IntEnum):
    PING = 1
    CLOSE = 2
    GETROOT = 3
    GETATTR = 4
    SETATTR = 5
    DELATTR = 6
    CALL = 7
    CALLATTR = 8
    REPR = 9
    STR = 10
    CMP = 11
    HASH = 12
    DIR = 13
    DEL = 14  # release references: NOTIFY [(oid, count), ...]
    INSPECT = 15  # the type descriptor of an object
    BUFFITER = 16  # next n items of an iterator
    CTXEXIT = 17
    INSTANCECHECK = 18
    CANCEL = 19  # NOTIFY seq: interrupt the thread running that request
    OBTAIN = 20  # a copy by value
    DELIVER = 21  # keep a by-value copy, answer with a reference
    # Notebook gestures: one request each.
    DISPLAY = 32  # the whole mimebundle from the peer's formatters
    COMPLETE = 33  # dir() for completion (policy-free, describes what the client holds)
    OINFO = 34  # type, name, doc, signature, file, source
    KEYS = 35  # key completions of a mapping
    CHILDREN = 36  # the object browser: children of obj reached through a path
    READ = 37  # bytes [offset, offset+length) of a large buffer, for obtain in chunks
    BATCH = 38  # [[target, ...], [[target index, name | None, args, kwargs], ...]]: the
    #             calls run in order, ONE reply: [[1, value] | [0, exception], ...] (rk.batch)
    ACK = 39  # NOTIFY n: n bytes of the sender's stream were received (resumable sessions)
    VARIABLES = 40  # NOTIFY bool: put the variables of each frame's line in the exceptions
    #                 sent to the sender (its %xmode Verbose); unknown to a peer: ignored


# Plain ints for the hot path: reading an IntEnum member is a lookup on its class each time.
REQUEST, REPLY, EXCEPTION = int(Kind.REQUEST), int(Kind.REPLY), int(Kind.EXCEPTION)
NOTIFY, BUFFERS = int(Kind.NOTIFY), int(Kind.BUFFERS)
CALLATTR, CLOSE = int(Op.CALLATTR), int(Op.CLOSE)


class Ext(IntEnum):
    """msgpack ext type codes of boxed values."""

    TUPLE = 1  # unused: tuples are msgpack arrays (arrays decode as tuples)
    BIGINT = 2
    COMPLEX = 3
    FROZENSET = 4
    SLICE = 5
    ELLIPSIS = 6
    REF = 7  # an object owned by the sender: oid and type id (12 bytes)
    PEERREF = 8  # an object owned by the receiver, coming home
    EXC = 9
    LIST = 10  # by-value copies for obtain/deliver
    DICT = 11
    SET = 12
    NDARRAY = 13
    NOTIMPLEMENTED = 14
    BYTEARRAY = 15
    BUFFER = 16  # a large bytes/array payload sent out of band: its index in the message
    REFDESC = 17  # a REF that carries its type's descriptor (the first time a type is sent)
    MASKED = 18  # a numpy masked array (values.py)
    PANDAS = 19  # a pandas DataFrame, Series or Index (values.py)
    # Standard-library values by value (stdvalues.py), wire revision 2.
    DATETIME = 20
    DATE = 21
    TIME = 22
    TIMEDELTA = 23
    DECIMAL = 24
    FRACTION = 25
    UUID = 26
    PATH = 27
    ENUM = 28  # an enum member, in a copy by value only
    TZINFO = 29  # a datetime.timezone or zoneinfo zone on its own (a datetime's tz field)


# The fixed layouts of ext values, and the ints msgpack packs as they are (others are BIGINT).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
REF = struct.Struct(">QI")  # REF: object id, type id
OID = struct.Struct(">Q")  # PEERREF: object id; BUFFER: buffer index
COMPLEX = struct.Struct(">dd")


def buffers_header(views: list[memoryview], reply_to: int | None = None) -> list:
    """The BUFFERS frame of a message's out-of-band buffers (see above): their count,
    which of them are bytes values (for the peer to receive those straight into bytes),
    and for a reply its sequence number (a caller may have memory waiting for it)."""
    kinds = bytes(type(view.obj) is bytes for view in views)
    header = [Kind.BUFFERS, len(views), kinds]
    if reply_to is not None:
        header.append(reply_to)
    return header


def buffers_announced(message: tuple, max_buffers: int) -> tuple[int, bytes]:
    """The count and kinds of a BUFFERS frame; a peer that sends no kinds (an older one)
    sends writable buffers only."""
    count = message[1]
    if type(count) is not int or not 0 < count <= max_buffers:
        raise ProtocolError(f"bad out-of-band buffer count {count!r}")
    if len(message) == 2:
        return count, bytes(count)
    kinds = message[2]
    if len(message) > 4 or type(kinds) is not bytes or len(kinds) != count \
            or kinds.strip(b"\0\1"):
        raise ProtocolError("malformed out-of-band buffer kinds")
    buffers_reply_to(message)  # checked here too
    return count, kinds


def buffers_reply_to(message: tuple) -> int | None:
    """The sequence number of the reply a BUFFERS frame's buffers belong to, if it says."""
    if len(message) < 4:
        return None
    seq = message[3]
    if type(seq) is not int or not 0 < seq <= INT_MAX:
        raise ProtocolError("malformed out-of-band buffer reply number")
    return seq

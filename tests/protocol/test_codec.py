"""The wire format, with bytes only: framing, size limits, by-value round trips."""

from __future__ import annotations

import struct

import msgpack
import pytest

from remote_kernel.errors import ProtocolError, RemoteError
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.codec import FrameDecoder, frame, pack, parse_header, unpack
from remote_kernel.protocol.objects import ObjectTable


def make_boxer() -> Boxer:
    return Boxer(ObjectTable(), describe=lambda cls: ("m", cls.__name__, (), (), 0, ""),
                 make_proxy=lambda oid, d: ("proxy", oid), proxy_oid=lambda obj: None,
                 peer_name=lambda: "test")


def roundtrip(value: object) -> object:
    boxer = make_boxer()
    payload = frame(pack(boxer.box(value)), 1 << 20)
    frames = FrameDecoder(1 << 20).feed(payload)
    assert len(frames) == 1
    return boxer.decode(frames[0])


VALUES = [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64), 10**100,
    -(10**80), 1.5, float("inf"), -0.0, 3 + 4j, complex(0, -1), "", "héllo", b"", b"\x00\xff",
    (), (1,), (1, (2, (3,))), ("a", b"b", None), frozenset(), frozenset({1, "x", (2, 3)}),
    slice(1, 10, 2), slice(None), Ellipsis, (Ellipsis, slice(None, 3)),
]


def _value_id(value: object) -> str:
    """A test id that is the same in every process (a set's repr follows string hashing,
    which differs between pytest-xdist's workers)."""
    if isinstance(value, frozenset):
        return f"frozenset({sorted(map(repr, value))})"
    return repr(value)


@pytest.mark.parametrize("value", VALUES, ids=_value_id)
def test_by_value_types_round_trip_with_their_type(value: object) -> None:
    result = roundtrip(value)
    assert type(result) is type(value)
    if isinstance(value, float) and value != value:
        return
    assert result == value


def test_nan_round_trips() -> None:
    result = roundtrip(float("nan"))
    assert isinstance(result, float) and result != result


def test_tuple_items_keep_their_types() -> None:
    result = roundtrip((1, (2.0, "s"), frozenset({b"x"}), 2**70))
    assert [type(x) for x in result] == [int, tuple, frozenset, int]
    assert type(result[1][0]) is float


def test_list_inside_tuple_travels_by_reference() -> None:
    result = roundtrip((1, [2, 3]))
    assert result[0] == 1
    assert result[1][0] == "proxy"


def test_by_value_copies_containers() -> None:
    boxer = make_boxer()
    value = {"a": [1, 2, {3}], (1, 2): bytearray(b"xy"), 3: frozenset({4})}
    decoded = boxer.decode(pack(boxer.box_value(value)))
    assert decoded == value
    assert type(decoded["a"]) is list and type(decoded["a"][2]) is set
    assert type(decoded[(1, 2)]) is bytearray


def test_by_value_refuses_custom_objects() -> None:
    with pytest.raises(TypeError, match="cannot copy"):
        make_boxer().box_value([object()])


def test_numpy_arrays_by_value() -> None:
    numpy = pytest.importorskip("numpy")
    boxer = make_boxer()
    for array in (numpy.arange(12, dtype="<f8").reshape(3, 4), numpy.zeros((0,), "i2"),
                  numpy.arange(6, dtype=">i4")[::2], numpy.float32(2.5)):
        decoded = boxer.decode(pack(boxer.box_value(array)))
        assert type(decoded) is type(array)
        assert decoded.dtype == array.dtype
        assert numpy.array_equal(decoded, array)
    decoded = boxer.decode(pack(boxer.box_value(numpy.arange(3))))
    decoded[0] = 7  # a writable array, not a view of the message
    with pytest.raises(TypeError):
        boxer.box_value(numpy.array([object()]))


def test_frame_header_over_limit_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(max_message_size=1024)
    with pytest.raises(ProtocolError, match="exceeds max_message_size"):
        decoder.feed(struct.pack(">I", 2**31))
    assert decoder.pending == 0
    with pytest.raises(ProtocolError):
        parse_header(struct.pack(">I", 1025), 1024)


def test_sender_refuses_oversized_message() -> None:
    with pytest.raises(ProtocolError, match="not sent"):
        frame(b"x" * 2048, 1024)


def test_frames_split_anywhere_reassemble() -> None:
    data = b"".join(frame(pack([i, "x" * i]), 1 << 16) for i in range(50))
    decoder = FrameDecoder(1 << 16)
    frames = []
    for i in range(0, len(data), 7):
        frames.extend(decoder.feed(data[i:i + 7]))
    assert [unpack(f) for f in frames] == [(i, "x" * i) for i in range(50)]


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"\x92\x01", b"\xdb\xff\xff\xff\xff", b"\xd4\x63\x00",
    msgpack.packb(msgpack.ExtType(7, b"\x01\x02")),
    msgpack.packb(msgpack.ExtType(2, b"not-a-number")),
    msgpack.packb(msgpack.ExtType(5, msgpack.packb([1, 2]))),
    msgpack.packb(msgpack.ExtType(9, msgpack.packb([1]))),
    msgpack.packb(msgpack.ExtType(8, b"\x00" * 8)),
    msgpack.packb(msgpack.ExtType(99, b"")),
    msgpack.packb(msgpack.ExtType(11, msgpack.packb([1]))),
], ids=repr)
def test_truncated_garbage_and_wrong_type_payloads_raise_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        make_boxer().decode(payload)


def test_truncated_frame_waits_for_more() -> None:
    decoder = FrameDecoder(1024)
    data = frame(pack("hello"), 1024)
    assert decoder.feed(data[:-1]) == []
    assert decoder.feed(data[-1:]) == [pack("hello")]


def test_exception_round_trip_keeps_type_and_traceback() -> None:
    boxer = make_boxer()
    try:
        {}["missing"]
    except KeyError as exc:
        payload = pack(boxer.box_exception(exc))
    decoded = boxer.decode(payload)
    assert isinstance(decoded, KeyError)
    assert decoded.remote_type == "builtins.KeyError"
    assert decoded.args == ("missing",)
    assert "test_exception_round_trip" in decoded.remote_traceback
    assert decoded.remote_frames[-1].function == "test_exception_round_trip_keeps_type_and_traceback"


def test_exception_module_names_are_never_imported() -> None:
    import sys

    boxer = make_boxer()
    payload = pack(msgpack.ExtType(9, pack(["evil_module_xyz", "Boom", ["x"], "x", "", [],
                                            "LookupError"])))
    decoded = boxer.decode(payload)
    assert "evil_module_xyz" not in sys.modules
    assert decoded.remote_type == "evil_module_xyz.Boom"
    assert type(decoded).__name__ == "Boom"
    assert isinstance(decoded, LookupError) and isinstance(decoded, RemoteError)

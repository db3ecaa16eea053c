"""Properties of the codec, for any input hypothesis can think of: values round-trip with
their types, any bytes decode to a value or raise ProtocolError, framing is independent of how
the stream is cut."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgpack import ExtType

from remote_kernel.core.transport import FrameReader
from remote_kernel.errors import ProtocolError
from remote_kernel.protocol import uninit
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.codec import HEADER, FrameDecoder, frame, pack, parse_header
from remote_kernel.protocol.messages import Ext
from remote_kernel.protocol.objects import ObjectTable

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _boxer() -> Boxer:
    def no_proxy(oid: int, descriptor: Any) -> Any:
        raise ProtocolError("no proxies in codec tests")

    return Boxer(ObjectTable(), describe=lambda cls: ("m", "C", (), (), 0, ""),
                 make_proxy=no_proxy, proxy_oid=lambda obj: None, peer_name=lambda: "peer")


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, slice):
        return same(a.start, b.start) and same(a.stop, b.stop) and same(a.step, b.step)
    return a == b


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True), st.complex_numbers(allow_nan=False), st.text(), st.binary(),
    st.just(Ellipsis),
)
hashable = st.recursive(
    scalars.filter(lambda v: not (isinstance(v, float) and math.isnan(v))),
    lambda children: st.one_of(st.tuples(children, children),
                               st.frozensets(children, max_size=4)),
    max_leaves=12,
)
values = st.recursive(
    st.one_of(scalars, hashable),
    lambda children: st.one_of(
        st.lists(children, max_size=5).map(tuple),
        st.builds(slice, children, children, children),
    ),
    max_leaves=30,
)
deep_values = st.recursive(
    st.one_of(scalars, hashable),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.lists(children, max_size=5).map(tuple),
        st.dictionaries(hashable, children, max_size=4), st.sets(hashable, max_size=4),
        st.binary().map(bytearray),
    ),
    max_leaves=30,
)


@SETTINGS
@given(values)
def test_values_round_trip_with_their_types(value: Any) -> None:
    boxer = _boxer()
    decoded = boxer.decode(pack(boxer.box(value)))
    assert same(decoded, value)


@SETTINGS
@given(deep_values)
def test_obtain_copies_round_trip(value: Any) -> None:
    boxer = _boxer()
    decoded = boxer.decode(pack(boxer.box_value(value)))
    assert same(decoded, value)


@SETTINGS
@given(st.sampled_from(["<f8", "<i4", "|u1", ">i8", "<c16", "|b1", "<U3"]),
       st.lists(st.integers(0, 4), min_size=0, max_size=3))
def test_numpy_arrays_round_trip(dtype: str, shape: list[int]) -> None:
    numpy = pytest.importorskip("numpy")
    size = int(numpy.prod(shape)) if shape else 1
    array = numpy.zeros(size, dtype=dtype).reshape(shape)
    boxer = _boxer()
    decoded = boxer.decode(pack(boxer.box_value(array)))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert numpy.array_equal(decoded, array)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_decode_to_a_value_or_protocol_error(data: bytes) -> None:
    try:
        _boxer().decode(data)
    except ProtocolError:
        pass


def _ext_payloads() -> st.SearchStrategy[bytes]:
    inner = st.recursive(
        st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8),
                  st.binary(max_size=16)),
        lambda children: st.lists(children, max_size=4),
        max_leaves=8,
    )
    return st.one_of(st.binary(max_size=64), inner.map(lambda v: msgpack.packb(v)))


ext_values = st.builds(ExtType, st.sampled_from([e.value for e in Ext] + [0, 16, 99, 127]),
                       _ext_payloads())


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(st.recursive(ext_values, lambda c: st.lists(c, max_size=4), max_leaves=10))
def test_any_ext_value_decodes_or_raises_protocol_error(value: Any) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    try:
        _boxer().decode(payload)
    except ProtocolError:
        pass


def test_complex_of_the_wrong_size_is_a_protocol_error() -> None:
    for size in (0, 1, 15, 17, 100):
        with pytest.raises(ProtocolError):
            _boxer().decode(msgpack.packb(ExtType(Ext.COMPLEX, b"\0" * size)))


@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_framing_is_independent_of_how_the_stream_is_cut(payloads: list[bytes],
                                                          data: st.DataObject) -> None:
    stream = b"".join(frame(p, 1 << 20) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(1 << 20)
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += decoder.feed(stream[start:cut])
        start = cut
    assert got == payloads
    assert decoder.pending == 0


class _CutStream:
    """A transport that hands out a byte stream in the given pieces (the reader's view)."""

    def __init__(self, stream: bytes, cuts: list[int]) -> None:
        bounds = [0, *cuts, len(stream)]
        self.pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if not self.pieces:
            return 0
        piece = self.pieces[0]
        count = min(len(piece), len(buffer))
        buffer[:count] = piece[:count]
        self.pieces[0] = piece[count:]
        if not self.pieces[0]:
            self.pieces.pop(0)
        return count

    def has_buffered_data(self) -> bool:
        return False


@SETTINGS
@given(st.lists(st.binary(max_size=3000), max_size=8), st.data())
def test_transports_read_frames_with_the_same_framer(payloads: list[bytes],
                                                      data: st.DataObject) -> None:
    """Production reads (FrameReader over a transport, receiving in place, large frames in
    their own buffer) and ``feed`` are one state machine: the same frames either way."""
    stream = b"".join(frame(p, 1 << 20) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader(_CutStream(stream, cuts), 1 << 20, chunk=512)  # type: ignore[arg-type]
    assert isinstance(reader.decoder, FrameDecoder)
    got = []
    while (payload := reader.read_frame(0)) is not None:
        got.append(bytes(payload))
    assert got == payloads
    assert FrameDecoder(1 << 20, chunk=512).feed(stream) == payloads


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=3000), st.booleans()), max_size=8), st.data())
def test_frames_announced_as_bytes_come_as_bytes(frames: list[tuple[bytes, bool]],
                                                 data: st.DataObject) -> None:
    """However the stream is cut, a large frame announced as bytes is that bytes value
    (received in place), any other large one a bytearray; the values are the same."""
    stream = b"".join(frame(p, 1 << 20) for p, _ in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader(_CutStream(stream, cuts), 1 << 20, chunk=512)  # type: ignore[arg-type]
    reader.expect([as_bytes for _, as_bytes in frames])
    got = []
    while (payload := reader.read_frame(0)) is not None:
        got.append(payload)
    assert got == [p for p, _ in frames]
    for payload, (_, as_bytes) in zip(got, frames, strict=True):
        if len(payload) > 512:
            assert type(payload) is (bytes if as_bytes and uninit.AVAILABLE else bytearray)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1024, 1 << 24))
def test_oversized_frames_are_refused_at_the_header(length: int, limit: int) -> None:
    decoder = FrameDecoder(limit)
    header = HEADER.pack(length)
    if length > limit:
        with pytest.raises(ProtocolError, match="max_message_size"):
            decoder.feed(header)
        with pytest.raises(ProtocolError):
            parse_header(header, limit)
    else:
        assert decoder.feed(header) == ([b""] if length == 0 else [])
        assert decoder.pending == (0 if length == 0 else 4)


@SETTINGS
@given(st.binary(max_size=4096))
def test_frame_refuses_to_build_oversized_messages(payload: bytes) -> None:
    limit = 1024
    if len(payload) > limit:
        with pytest.raises(ProtocolError, match="not sent"):
            frame(payload, limit)
    else:
        assert frame(payload, limit)[4:] == payload


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 4096))
def test_any_stream_gives_frames_or_protocol_error(stream: bytes, cut: int) -> None:
    decoder = FrameDecoder(1 << 16)
    try:
        decoder.feed(stream[:cut])
        decoder.feed(stream[cut:])
    except ProtocolError:
        pass


def test_a_short_type_descriptor_is_not_mistaken_for_a_bare_reference() -> None:
    seen: list[tuple[int, Any]] = []
    sender = Boxer(ObjectTable(), describe=lambda cls: ("m", "C", (), (), 0, ""),
                   make_proxy=lambda oid, d: None, proxy_oid=lambda obj: None,
                   peer_name=lambda: "peer")
    receiver = Boxer(ObjectTable(), describe=lambda cls: ("m", "C", (), (), 0, ""),
                     make_proxy=lambda oid, d: seen.append((oid, d)),
                     proxy_oid=lambda obj: None, peer_name=lambda: "peer")
    receiver.decode(pack(sender.box(object())))
    assert seen == [(1, ("m", "C", (), (), 0, ""))]

"""Large bytes values are received straight into their final ``bytes`` object (no zero-fill,
no copy), arrays' buffers stay writable, and the BUFFERS frame's kinds are checked."""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.errors import ProtocolError
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol import uninit
from remote_kernel.protocol.codec import BIG_START, CHUNK, HEADER, FrameDecoder
from remote_kernel.protocol.messages import (
    OID,
    Ext,
    Kind,
    Op,
    buffers_announced,
    buffers_header,
)
from tests.hardening.rawpeer import RawPeer, frame, packb

MiB = 1 << 20
needs_uninit = pytest.mark.skipif(not uninit.AVAILABLE, reason="no uninitialised buffers here")


def _peak_while(fn: Any) -> tuple[Any, int]:
    """fn()'s result and the peak of memory allocated meanwhile (this process)."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- the decoder ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [CHUNK + 1, BIG_START, 3 * MiB + 5])
@pytest.mark.parametrize("piece", [1000, 1 << 16, None])
def test_an_announced_frame_comes_as_bytes_however_it_arrives(size: int,
                                                              piece: int | None) -> None:
    payload = os.urandom(size)
    stream = HEADER.pack(size) + payload + HEADER.pack(size) + payload
    decoder = FrameDecoder(1 << 30)
    decoder.expect(b"\1\0")
    step = piece or len(stream)
    frames = [f for start in range(0, len(stream), step)
              for f in decoder.feed(stream[start:start + step])]
    assert frames == [payload, payload]
    assert type(frames[0]) is (bytes if uninit.AVAILABLE else bytearray)
    assert type(frames[1]) is bytearray  # not announced as bytes: writable
    assert hash(frames[0]) == hash(payload)
    assert decoder.pending == 0


def test_without_uninitialised_buffers_frames_come_as_today(monkeypatch) -> None:
    monkeypatch.setattr(uninit, "AVAILABLE", False)
    payload = os.urandom(2 * MiB)
    decoder = FrameDecoder(1 << 30)
    decoder.expect([1])
    (got,) = decoder.feed(HEADER.pack(len(payload)) + payload)
    assert type(got) is bytearray and got == payload


def test_a_huge_announced_frame_costs_only_what_arrived() -> None:
    """The BIG_START rule holds for bytes too: a peer announcing 1 GiB and sending 10 bytes
    makes the decoder allocate about BIG_START, not the frame's size."""
    decoder = FrameDecoder(1 << 31)
    decoder.expect([1])
    _, peak = _peak_while(lambda: decoder.feed(HEADER.pack(1 << 30) + os.urandom(CHUNK + 10)))
    assert peak < 4 * BIG_START
    assert decoder.pending == CHUNK + 10 + 4


@needs_uninit
def test_new_bytes_is_writable_until_handed_over() -> None:
    value, view = uninit.new_bytes(10)
    with view:
        view[:] = b"0123456789"
    assert value == b"0123456789" and type(value) is bytes
    with pytest.raises(ValueError):
        uninit.new_bytes(1)  # CPython shares 1-byte bytes objects


@needs_uninit
@pytest.mark.skipif(uninit._madvise is None, reason="no madvise(MADV_HUGEPAGE) here")
def test_large_buffers_are_exact_and_ask_for_huge_pages(monkeypatch) -> None:
    """From 4 MiB, new buffers are advised to use huge pages (four times faster to fill
    than fresh 4 KiB pages); the advice covers only whole pages inside the buffer."""
    advised: list[tuple[int, int, int]] = []
    monkeypatch.setattr(uninit, "_madvise", lambda *call: advised.append(call) or 0)
    size = uninit.HUGE_MIN + 12345
    value, view = uninit.new_bytes(size)
    with view:
        view[:] = b"x" * size
    assert type(value) is bytes and value == b"x" * size
    array = uninit.new_bytearray(uninit.HUGE_MIN)
    assert type(array) is bytearray and len(array) == uninit.HUGE_MIN
    assert len(advised) == 2
    for start, length, advice in advised:
        assert start % uninit._PAGE == 0 and length % uninit._PAGE == 0
        assert uninit.HUGE_MIN - uninit._PAGE <= length <= size
        assert advice == uninit._MADV_HUGEPAGE
    advised.clear()
    uninit.new_bytes(uninit.HUGE_MIN - 1)
    uninit.new_bytearray(100)
    assert advised == []  # small buffers: no advice


# -- the BUFFERS frame ---------------------------------------------------------------------

def test_the_buffers_frame_names_the_bytes_buffers() -> None:
    views = [memoryview(b"x" * 10).cast("B"), memoryview(bytearray(3)).cast("B")]
    header = buffers_header(views)
    assert header == [Kind.BUFFERS, 2, b"\1\0"]
    assert buffers_announced(tuple(header), 1024) == (2, b"\1\0")
    assert buffers_announced((Kind.BUFFERS, 3), 1024) == (3, b"\0\0\0")  # an older sender


@pytest.mark.parametrize("message", [
    (Kind.BUFFERS, 1, b"\2"), (Kind.BUFFERS, 2, b"\1"), (Kind.BUFFERS, 1, "\1"),
    (Kind.BUFFERS, 1, b"\1", 0), (Kind.BUFFERS, 1, (1,)), (Kind.BUFFERS, 0, b""),
    (Kind.BUFFERS, 2000, bytes(2000)), (Kind.BUFFERS, "1", b"\1"),
])
def test_malformed_buffer_kinds_are_refused(message: tuple) -> None:
    with pytest.raises(ProtocolError):
        buffers_announced(message, 1024)


@pytest.fixture
def hostile() -> Iterator[tuple[Connection, RawPeer]]:
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    raw = RawPeer(right)
    yield victim, raw
    victim.close()
    right.close()


@pytest.mark.parametrize("kinds", [b"\2", b"\1\1", "x", [1]])
def test_a_hostile_buffers_frame_closes_the_connection(hostile: tuple[Connection, RawPeer],
                                                       kinds: Any) -> None:
    victim, raw = hostile
    serving = victim.serve_in_background()
    try:
        raw.send([Kind.BUFFERS, 1, kinds])
        assert raw.closed_by_victim()
        assert victim.closed
    finally:
        serving.stop(5)


def _answer_with_buffer(victim: Connection, raw: RawPeer, kinds: bytes, data: bytes,
                        value: Any, pause: float = 0.0) -> Any:
    """The victim's PING is answered with ``value``, after one out-of-band ``data``
    announced with ``kinds`` (a ``pause`` in the middle of its frame)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(victim.sync_request(Op.PING, 1)))
    thread.start()
    request = raw.recv_kind((Kind.REQUEST,))
    raw.send([Kind.BUFFERS, 1, kinds])
    raw_frame = frame(data)
    raw.send_bytes(raw_frame[:len(raw_frame) // 2])
    time.sleep(pause)
    raw.send_bytes(raw_frame[len(raw_frame) // 2:])
    raw.send([Kind.REPLY, request[1], value])
    thread.join(10)
    assert result, "no reply"
    return result[0]


def test_an_array_announced_as_bytes_is_still_writable(hostile: tuple[Connection,
                                                                      RawPeer]) -> None:
    numpy = pytest.importorskip("numpy")
    victim, raw = hostile
    data = numpy.arange(CHUNK // 4, dtype="<f8").tobytes()  # 2 * CHUNK bytes
    fields = ["<f8", [CHUNK // 4], False, ExtType(Ext.BUFFER, OID.pack(0)), "C"]
    array = _answer_with_buffer(victim, raw, b"\1", data, ExtType(Ext.NDARRAY, packb(fields)))
    assert array.flags.writeable and array.tobytes() == data
    array[0] = 42.0


def test_bytes_announced_as_a_buffer_are_still_bytes(hostile: tuple[Connection,
                                                                     RawPeer]) -> None:
    victim, raw = hostile
    data = os.urandom(2 * CHUNK)
    value = _answer_with_buffer(victim, raw, b"\0", data, ExtType(Ext.BUFFER, OID.pack(0)))
    assert type(value) is bytes and value == data


def test_bytes_survive_a_pause_mid_frame(hostile: tuple[Connection, RawPeer]) -> None:
    """The reader gives up its slice (READ_SLICE) in the middle of the frame and resumes."""
    victim, raw = hostile
    data = os.urandom(3 * MiB)
    value = _answer_with_buffer(victim, raw, b"\1", data, ExtType(Ext.BUFFER, OID.pack(0)),
                                pause=1.3)
    assert type(value) is bytes and value == data


def test_large_bytes_over_pipes() -> None:
    from remote_kernel.net.transports.pipes import PipeTransport
    from tests.services import TestService

    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    server = Connection(PipeTransport(b_read, b_write, "client"), TestService, name="client")
    serving = server.serve_in_background()
    client = Connection(PipeTransport(a_read, a_write, "server"), rk.VoidService,
                        name="server")
    try:
        data = os.urandom(3 * MiB + 1)
        back = client.root.echo(data)
        assert type(back) is bytes and back == data
    finally:
        client.close()
        serving.stop(5)
        server.close()


# -- end to end, with a server process -----------------------------------------------------

@pytest.mark.parametrize("size", [CHUNK + 1, 1 * MiB, 4 * MiB + 3])
def test_large_bytes_round_trip_as_bytes(conn: rk.Connection, size: int) -> None:
    data = os.urandom(size)
    back = conn.root.echo(data)  # client -> server -> client
    assert type(back) is bytes and back == data
    assert conn.root.hash_of(data) == conn.root.hash_of(data)  # hashes what it received
    assert conn.root.echo(bytearray(data)) == bytearray(data)


@needs_uninit
def test_receiving_large_bytes_costs_no_copy(conn: rk.Connection) -> None:
    """Receiving 4 MiB of bytes allocates the value (and the first BIG_START bytes),
    not a zero-filled buffer plus a copy of it."""
    size = 4 * MiB
    data = os.urandom(size)
    conn.root.echo(b"warm-up" * 20_000)
    back, peak = _peak_while(lambda: conn.root.echo(data))
    assert back == data
    assert peak < size + 2 * BIG_START


def test_sending_bytes_in_process_both_ways_costs_no_copy(pair: Any) -> None:
    """Both ends in this process: the server receives the argument, the client the
    result; each a bytes object received in place (a copy would show as 2 x size)."""
    client, _server = pair
    size = 4 * MiB
    data = os.urandom(size)
    assert client.root.hash_of(data) == hash(data)
    value, peak = _peak_while(lambda: client.root.hash_of(data))
    assert value == hash(data)
    if uninit.AVAILABLE:
        assert peak < size + 2 * BIG_START


def test_without_uninitialised_buffers_bytes_still_arrive_as_bytes(pair: Any,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(uninit, "AVAILABLE", False)
    client, _server = pair
    data = os.urandom(2 * MiB)
    back = client.root.echo(data)
    assert type(back) is bytes and back == data


# -- bytearrays out of band, copies with huge pages (issue 26) -------------------------------

def test_a_bytearray_received_out_of_band_is_the_value_itself(
        hostile: tuple[Connection, RawPeer]) -> None:
    """A BYTEARRAY value whose buffer comes out of band as a writable buffer is that very
    buffer: allocated once, no copy into a second bytearray."""
    victim, raw = hostile
    data = os.urandom(4 * MiB)
    raw_frame = frame(data)
    reply = ExtType(Ext.BYTEARRAY, packb(ExtType(Ext.BUFFER, OID.pack(0))))
    result: list[Any] = []

    def answer() -> None:
        thread = threading.Thread(
            target=lambda: result.append(victim.sync_request(Op.PING, 1)))
        thread.start()
        request = raw.recv_kind((Kind.REQUEST,))
        raw.send([Kind.BUFFERS, 1, b"\0"])
        raw.send_bytes(raw_frame)
        raw.send([Kind.REPLY, request[1], reply])
        thread.join(10)

    _, peak = _peak_while(answer)
    assert result and type(result[0]) is bytearray and result[0] == data
    assert peak < 4 * MiB + 2 * BIG_START, peak  # (it was copied twice more)


def test_a_large_bytearray_goes_out_of_band_uncopied_and_comes_back(conn: rk.Connection) -> None:
    from remote_kernel.protocol.boxing import OOB_MIN, Boxer
    from remote_kernel.protocol.objects import ObjectTable

    data = bytearray(os.urandom(5 * MiB + 7))
    copy = rk.deliver(conn, data)  # client -> server, by value
    assert rk.obtain(copy, progress=False) == data
    assert type(rk.obtain(copy, progress=False)) is bytearray
    boxer = Boxer(ObjectTable(), describe=lambda cls: ("m", cls.__name__, (), (), 0, ""),
                  make_proxy=lambda oid, d: ("proxy", oid), proxy_oid=lambda obj: None,
                  peer_name=lambda: "test")
    boxer.begin()
    boxed = boxer.box_value(data)
    assert boxed.code == Ext.BYTEARRAY and len(boxer.outgoing) == 1
    assert boxer.outgoing[0].obj is data  # the bytearray's own memory, sent as it is
    small = bytearray(b"x" * (OOB_MIN - 1))
    assert boxer.box_value(small).code == Ext.BYTEARRAY and len(boxer.outgoing) == 1


@pytest.mark.parametrize("size", [0, 5, uninit.HUGE_MIN - 1, uninit.HUGE_MIN + 4097])
def test_copy_bytes_is_an_exact_copy_with_huge_pages_when_large(monkeypatch,
                                                               size: int) -> None:
    advised: list[tuple] = []
    if uninit._madvise is not None:
        monkeypatch.setattr(uninit, "_madvise", lambda *call: advised.append(call) or 0)
    source = bytearray(os.urandom(size))
    copy = uninit.copy_bytes(memoryview(source))
    assert type(copy) is bytes and copy == source
    source[:1] = b"!" if size else b""
    assert size == 0 or copy[:1] != b"!" or source[:1] == copy[:1]
    large = uninit.AVAILABLE and uninit._madvise is not None and size >= uninit.HUGE_MIN
    assert bool(advised) == large
    wide = memoryview(bytearray(size - size % 8)).cast("d")  # any format: its bytes
    assert uninit.copy_bytes(wide) == bytes(wide)

"""Chunked obtain: one contiguous snapshot per transfer (so any layout costs about what a
contiguous array does), and what a peer announces or sends is checked before it is used."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.handlers import LARGE_MARKER
from remote_kernel.protocol.messages import OID, Ext, Kind, Op
from tests.hardening.rawpeer import RawPeer, exc, frame, ref

numpy = pytest.importorskip("numpy")


def _timed_obtain(proxy: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = rk.obtain(proxy, progress=False)
    return time.perf_counter() - started, value


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_transposed_array_costs_about_what_a_contiguous_one_does(classic: Any) -> None:
    classic.execute("import numpy\n"
                    "big = numpy.arange(4096 * 8192, dtype=numpy.float64).reshape(4096, 8192)\n"
                    "flipped = big.T")
    contiguous = transposed = float("inf")
    for _ in range(2):  # the better of two: the machine is shared
        took, value = _timed_obtain(classic.namespace["big"])
        assert value.shape == (4096, 8192) and value[4095, 8191] == 4096 * 8192 - 1
        contiguous = min(contiguous, took)
        del value
        took, value = _timed_obtain(classic.namespace["flipped"])
        # The layout travels too: a transposed C array is Fortran-ordered, here as there.
        assert value.shape == (8192, 4096) and value[0, 1] == 8192 and value[8191, 0] == 8191
        assert value.flags.f_contiguous
        transposed = min(transposed, took)
        del value
    print(f"256 MiB obtain: contiguous {contiguous:.2f} s, transposed {transposed:.2f} s")
    assert transposed < 2 * contiguous, (contiguous, transposed)
    classic.execute("del big, flipped")


def test_the_chunks_of_one_transfer_come_from_one_snapshot(classic: Any) -> None:
    classic.execute("import numpy\nchanging = numpy.zeros(2 * 1024 * 1024)")
    array = classic.namespace["changing"]
    # The first chunk is read, then the array changes on the server: the copy is whole.
    from remote_kernel.core import api

    calls = {"n": 0}
    async_request = Connection.async_request

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        result = async_request(self, op, *args, **kwargs)
        if op == Op.READ:
            calls["n"] += 1
            if calls["n"] == 1:  # the first chunk arrives, then the array changes
                result.wait(30)
                self.sync_request(Op.CALLATTR, classic.root, "execute",
                                  ("changing[:] = 1",), None)
        return result

    Connection.async_request = spy  # type: ignore[method-assign]
    try:
        value = api.obtain(array, progress=False)
    finally:
        Connection.async_request = async_request  # type: ignore[method-assign]
    assert calls["n"] >= 2
    assert float(value.sum()) == 0.0, "chunks after the change came from the changed array"


class _Server:
    """A hostile server answering OBTAIN and READ by hand."""

    def __init__(self) -> None:
        left, right = socket.socketpair()
        self.victim = Connection(SocketTransport(left, "hostile"), rk.VoidService,
                                 name="hostile")
        self.raw = RawPeer(right)
        self.sock = right

    def proxy(self) -> Any:
        result = self.victim.async_request(Op.PING, None)
        request = self.raw.recv_kind((Kind.REQUEST,))
        self.raw.send([Kind.REPLY, request[1], ref(5, 1, ["numpy", "ndarray", [], [], 0, ""])])
        result.wait(5)
        return result.value

    def serve(self, answer: Any, reads: int = 10_000) -> threading.Thread:
        """Answer OBTAIN with ``answer`` and every READ with an empty chunk."""

        def run() -> None:
            count = 0
            while count < reads:
                try:
                    message = self.raw.recv_kind((Kind.REQUEST,), timeout=5)
                except (TimeoutError, OSError, EOFError):
                    return
                value = answer if message[2] == Op.OBTAIN else b""
                count += message[2] == Op.READ
                try:
                    self.raw.send([Kind.REPLY, message[1], value])
                except OSError:
                    return

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.victim.close()
        self.sock.close()


def _announced(code: Any, fields: list, sizes: list) -> list:
    """The large-value marker of an OBTAIN reply (values.py): the snapshot by reference."""
    return [LARGE_MARKER, code, fields, sizes,
            ref(9, 3, ["remote_kernel.protocol.values", "Snapshot", [], [], 0, ""])]


def test_an_empty_chunk_is_an_error() -> None:
    server = _Server()
    try:
        proxy = server.proxy()
        thread = server.serve(_announced("bytes", [0], [8 << 20]))
        started = time.monotonic()
        with pytest.raises(rk.ProtocolError, match="malformed chunk"):
            rk.obtain(proxy, progress=False)
        assert time.monotonic() - started < 5
        assert server.victim.stats["requests"] < 10
    finally:
        server.close()
        thread.join(5)


@pytest.mark.parametrize("announced", [
    _announced("bytes", [0], [3 << 30]),  # over max_message_size
    _announced("bytes", [0], [-5]),
    _announced("pickle", [0], [100]),
    [LARGE_MARKER, "bytes", [0], [100], "not a snapshot"],
], ids=["3 GiB", "negative", "unknown kind", "no snapshot"])
def test_an_announced_transfer_is_checked_before_anything_is_allocated(
        announced: list) -> None:
    import tracemalloc

    server = _Server()
    try:
        proxy = server.proxy()
        thread = server.serve(announced)
        tracemalloc.start()
        try:
            with pytest.raises((rk.ProtocolError, MemoryError)):
                rk.obtain(proxy, progress=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 << 20
    finally:
        server.close()
        thread.join(5)


def test_each_chunk_lands_in_the_destination(classic: Any) -> None:
    """A READ offers the part of the destination its chunk fills; the chunk is received
    there (the reply hands back that very view), so no chunk is copied on arrival. The
    READs are in flight together (async_request), each with its own offer."""
    classic.execute("import numpy\nodd = numpy.arange(9 * 131072 + 1, dtype=numpy.float64)")
    async_request = Connection.async_request
    reads: list[tuple[Any, Any]] = []

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        result = async_request(self, op, *args, **kwargs)
        if op == Op.READ:
            reads.append((kwargs.get("into"), result))
        return result

    Connection.async_request = spy  # type: ignore[method-assign]
    try:
        value = rk.obtain(classic.namespace["odd"], progress=False)
    finally:
        Connection.async_request = async_request  # type: ignore[method-assign]
    assert value.shape == (9 * 131072 + 1,) and value[-1] == 9 * 131072
    assert numpy.array_equal(value, numpy.arange(9 * 131072 + 1, dtype=numpy.float64))
    in_place = [into is not None and result.value is into.view for into, result in reads]
    assert len(reads) == 3 and all(in_place), reads  # 4 + 4 + 1 MiB (+ 8 bytes), each in place
    classic.execute("del odd")


@pytest.mark.parametrize("header", ["other reply", "malformed"],
                         ids=["buffers-for-one-reply-then-another-message",
                              "malformed-reply-number"])
def test_buffers_announced_for_a_reply_must_come_with_it(header: str) -> None:
    """A hostile server names the READ's reply in a BUFFERS frame (so the chunk lands in
    the caller's memory) and then sends another message, or names a nonsense reply
    number: the connection is dropped with a ProtocolError, nothing hangs."""
    from tests.hardening.rawpeer import frame, packb

    server = _Server()
    try:
        proxy = server.proxy()
        size = 8 << 20

        def run() -> None:
            message = server.raw.recv_kind((Kind.REQUEST,), timeout=5)  # OBTAIN
            server.raw.send([Kind.REPLY, message[1], _announced("bytes", [0], [size])])
            message = server.raw.recv_kind((Kind.REQUEST,), timeout=5)  # the first READ
            reply_to = message[1] if header == "other reply" else "seven"
            try:
                server.raw.send([Kind.BUFFERS, 1, b"\1", reply_to])
                server.raw.send_bytes(frame(bytes(4 << 20)))
                server.raw.send_bytes(frame(packb([Kind.REPLY, message[1] + 100, None])))
            except OSError:  # the victim hung up first (the malformed case)
                pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started = time.monotonic()
        expected = "came with another message" if header == "other reply" \
            else "reply number"
        with pytest.raises(rk.ProtocolError, match=expected):
            rk.obtain(proxy, progress=False)
        assert time.monotonic() - started < 10
        assert server.victim.closed
        thread.join(5)
    finally:
        server.close()


# -- READs in flight together (issue 26) ----------------------------------------------------

CHUNK = 4 << 20
IN_BUFFER = ExtType(Ext.BUFFER, OID.pack(0))  # "the value is the buffer announced before"


def _answer(raw: RawPeer, read: tuple, data: bytes) -> None:
    """Answer a READ with ``data`` out of band, announced for that READ's reply."""
    raw.send([Kind.BUFFERS, 1, b"\1", read[1]])
    raw.send_bytes(frame(data))
    raw.send([Kind.REPLY, read[1], IN_BUFFER])


def _reads(raw: RawPeer, count: int) -> list[tuple]:
    reads = [raw.recv_kind((Kind.REQUEST,), timeout=5) for _ in range(count)]
    assert all(read[2] == Op.READ for read in reads), reads
    return reads


def _hostile(server: _Server, size: int, behave: Any) -> threading.Thread:
    """Announce a bytes value of ``size`` for OBTAIN, then ``behave(raw)``."""

    def run() -> None:
        try:
            obtain = server.raw.recv_kind((Kind.REQUEST,), timeout=5)
            server.raw.send([Kind.REPLY, obtain[1], _announced("bytes", [0], [size])])
            behave(server.raw)
        except (OSError, EOFError, TimeoutError):
            pass  # the victim hung up (what some of these tests expect)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_reads_go_ahead_of_their_replies_and_each_lands_in_place() -> None:
    """Every READ of the first window is sent before the first chunk is answered; the
    server answers them in reverse order and each chunk still lands where its own READ
    asked (replies are matched by request number, as a server serving in several threads
    may answer)."""
    from remote_kernel.core.api import READS_AHEAD

    server = _Server()
    try:
        proxy = server.proxy()
        seen: list[int] = []

        def reverse(raw: RawPeer) -> None:
            reads = _reads(raw, READS_AHEAD)  # all before any answer
            seen.extend(read[4] for read in reads)
            for read in reversed(reads):
                _answer(raw, read, bytes([read[4] // CHUNK + 1]) * read[5])

        thread = _hostile(server, READS_AHEAD * CHUNK, reverse)
        value = rk.obtain(proxy, progress=False)
        thread.join(5)
        assert seen == [n * CHUNK for n in range(READS_AHEAD)]
        assert value == b"".join(bytes([n + 1]) * CHUNK for n in range(READS_AHEAD))
        assert not server.victim.closed
    finally:
        server.close()


@pytest.mark.parametrize("wrong", [CHUNK - 1, CHUNK + 1, 100],
                         ids=["one byte short", "one byte over", "small, inline"])
def test_a_pipelined_read_answered_with_the_wrong_size_is_refused(wrong: int) -> None:
    from remote_kernel.core.api import READS_AHEAD

    server = _Server()
    try:
        proxy = server.proxy()

        def short(raw: RawPeer) -> None:
            reads = _reads(raw, READS_AHEAD)
            _answer(raw, reads[0], b"\1" * CHUNK)
            if wrong >= 64 * 1024:
                _answer(raw, reads[1], b"\2" * wrong)
            else:
                raw.send([Kind.REPLY, reads[1][1], b"\2" * wrong])

        thread = _hostile(server, 3 * CHUNK, short)
        started = time.monotonic()
        with pytest.raises(rk.ProtocolError, match="malformed chunk"):
            rk.obtain(proxy, progress=False)
        assert time.monotonic() - started < 10
        thread.join(5)
    finally:
        server.close()


def test_a_chunk_announced_for_one_pipelined_read_and_replied_to_another_is_refused() -> None:
    from remote_kernel.core.api import READS_AHEAD

    server = _Server()
    try:
        proxy = server.proxy()

        def crossed(raw: RawPeer) -> None:
            reads = _reads(raw, READS_AHEAD)
            raw.send([Kind.BUFFERS, 1, b"\1", reads[2][1]])  # lands in the third's offer
            raw.send_bytes(frame(b"\3" * CHUNK))
            raw.send([Kind.REPLY, reads[0][1], IN_BUFFER])  # and is the first's reply

        thread = _hostile(server, 3 * CHUNK, crossed)
        with pytest.raises(rk.ProtocolError, match="came with another message"):
            rk.obtain(proxy, progress=False)
        assert server.victim.closed
        thread.join(5)
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_stop_in_the_middle_of_pipelined_reads_writes_nothing_more() -> None:
    """Stop while the second of several READs in flight is landing: the rest of its chunk
    and the whole chunks answered for the READs sent ahead go anywhere but the
    destination they were offered, and the connection carries the next call."""
    import _thread

    from remote_kernel.core.api import READS_AHEAD

    server = _Server()
    size = (READS_AHEAD + 1) * CHUNK
    log: list[int] = []

    def stall(raw: RawPeer) -> None:
        reads = _reads(raw, READS_AHEAD)
        _answer(raw, reads[0], b"\x11" * CHUNK)
        raw.send([Kind.BUFFERS, 1, b"\1", reads[1][1]])
        raw.send_bytes(frame(b"\x22" * CHUNK)[:4 + CHUNK // 2])  # half of it, then wait
        after = raw.recv_kind((Kind.REQUEST,), timeout=20)  # the victim's next call
        while after[2] == Op.READ:  # sent when the first chunk was in
            reads.append(after)
            after = raw.recv_kind((Kind.REQUEST,), timeout=20)
        log.append(len(reads))
        raw.send_bytes(b"\x33" * (CHUNK - CHUNK // 2))
        raw.send([Kind.REPLY, reads[1][1], IN_BUFFER])
        for late in reads[2:]:
            _answer(raw, late, b"\x44" * late[5])
        raw.send([Kind.REPLY, after[1], after[3]])

    offers: list[Any] = []
    async_request = Connection.async_request

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        offers.append(kwargs.get("into"))
        return async_request(self, op, *args, **kwargs)

    try:
        proxy = server.proxy()
        thread = _hostile(server, size, stall)
        Connection.async_request = spy  # type: ignore[method-assign]
        stop = threading.Timer(1.0, _thread.interrupt_main)
        stop.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                rk.obtain(proxy, progress=False)
        finally:
            stop.cancel()
            Connection.async_request = async_request  # type: ignore[method-assign]
        assert len(offers) == READS_AHEAD + 1 and all(offers)
        assert all(offer.withdrawn for offer in offers)
        destination = offers[0].owner  # one bytes object; the offers keep it alive here
        at_stop = bytes(bytearray(destination))
        assert at_stop[:CHUNK] == b"\x11" * CHUNK
        assert server.victim.sync_request(Op.PING, "after", timeout=10) == "after"
        thread.join(5)
        assert log == [READS_AHEAD + 1]
        assert not server.victim.closed
        assert destination == at_stop, "bytes landed in a withdrawn offer"
        late = memoryview(destination)  # (the rest is uninitialised: any bytes but these)
        assert late[CHUNK + CHUNK // 2:2 * CHUNK] != b"\x33" * (CHUNK // 2)
        assert all(late[n * CHUNK:(n + 1) * CHUNK] != b"\x44" * CHUNK
                   for n in range(2, READS_AHEAD + 1))
    finally:
        server.close()


def test_every_large_buffer_of_a_value_lands_in_place(classic: Any) -> None:
    """A masked array is three buffers (data, mask, fill value): a READ ends where a large
    buffer ends, so each large chunk lands in place; the small rest comes inline."""
    classic.execute("import numpy\n"
                    "n = 9 * 131072 + 3\n"
                    "masked = numpy.ma.masked_array(numpy.arange(n, dtype=numpy.float64),\n"
                    "                               mask=numpy.arange(n) % 3 == 0)")
    async_request = Connection.async_request
    reads: list[tuple[Any, Any, int]] = []

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        result = async_request(self, op, *args, **kwargs)
        if op == Op.READ:
            reads.append((kwargs.get("into"), result, args[2]))
        return result

    Connection.async_request = spy  # type: ignore[method-assign]
    try:
        value = rk.obtain(classic.namespace["masked"], progress=False)
    finally:
        Connection.async_request = async_request  # type: ignore[method-assign]
    n = 9 * 131072 + 3
    assert numpy.array_equal(value.data, numpy.arange(n, dtype=numpy.float64))
    assert numpy.array_equal(value.mask, numpy.arange(n) % 3 == 0)
    large = [(into, result) for into, result, length in reads if length >= 64 * 1024]
    assert len(large) >= 3 and all(into is not None and result.value is into.view
                                   for into, result in large), reads
    assert sum(length for _, _, length in reads) == n * 8 + n + 8
    classic.execute("del masked")


@pytest.mark.timeout(30)
def test_stop_while_waiting_for_an_async_result_ends_when_the_cancel_is_answered() -> None:
    """Stop during ``AsyncResult.wait`` (each READ of an obtain waits so) cancels the
    request and ends as soon as the peer answers it, not after the whole grace period.
    Stop is a real SIGINT here, as in a kernel (it interrupts the blocking receive)."""
    import os
    import signal

    server = _Server()
    try:
        result = server.victim.async_request(Op.PING, None)
        request = server.raw.recv_kind((Kind.REQUEST,))

        def answer_the_cancel() -> None:
            cancel = server.raw.recv_kind((Kind.NOTIFY,), timeout=10)
            assert cancel[1] == Op.CANCEL and cancel[2] == request[1]
            server.raw.send([Kind.EXCEPTION, request[1],
                             exc("builtins", "KeyboardInterrupt", "cancelled")])

        thread = threading.Thread(target=answer_the_cancel, daemon=True)
        thread.start()
        stop = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        stop.start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                result.wait(20)
        finally:
            stop.cancel()
        assert time.monotonic() - started < 0.3 + 0.6  # the grace is 1 s
        thread.join(5)
        assert not server.victim.closed
    finally:
        server.close()

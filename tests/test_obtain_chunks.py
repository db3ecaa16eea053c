"""Chunked obtain: one contiguous snapshot per transfer (so any layout costs about what a
contiguous array does), and what a peer announces or sends is checked before it is used."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.handlers import LARGE_MARKER
from remote_kernel.protocol.messages import Kind, Op
from tests.hardening.rawpeer import RawPeer, ref

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
    sync_request = Connection.sync_request

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        result = sync_request(self, op, *args, **kwargs)
        if op == Op.READ:
            calls["n"] += 1
            if calls["n"] == 1:
                sync_request(self, Op.CALLATTR, classic.root, "execute",
                             ("changing[:] = 1",), None)
        return result

    Connection.sync_request = spy  # type: ignore[method-assign]
    try:
        value = api.obtain(array, progress=False)
    finally:
        Connection.sync_request = sync_request  # type: ignore[method-assign]
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
    there (the reply hands back that very view), so no chunk is copied on arrival."""
    classic.execute("import numpy\nodd = numpy.arange(9 * 131072 + 1, dtype=numpy.float64)")
    sync_request = Connection.sync_request
    reads: list[bool] = []

    def spy(self: Connection, op: int, *args: Any, **kwargs: Any) -> Any:
        result = sync_request(self, op, *args, **kwargs)
        if op == Op.READ:
            into = kwargs.get("into")
            reads.append(into is not None and result is into.view)
        return result

    Connection.sync_request = spy  # type: ignore[method-assign]
    try:
        value = rk.obtain(classic.namespace["odd"], progress=False)
    finally:
        Connection.sync_request = sync_request  # type: ignore[method-assign]
    assert value.shape == (9 * 131072 + 1,) and value[-1] == 9 * 131072
    assert numpy.array_equal(value, numpy.arange(9 * 131072 + 1, dtype=numpy.float64))
    assert len(reads) == 3 and all(reads), reads  # 4 + 4 + 1 MiB (+ 8 bytes), each in place
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

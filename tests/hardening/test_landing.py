"""Landing buffers: memory a caller offers for a reply's large buffer is owned by whatever
writes into it until the frame ends. A READ that gives up mid-frame (timeout, Stop) leaves
the rest of the frame to drain into scratch memory, never into the withdrawn buffer, and
the connection goes on working."""

from __future__ import annotations

import _thread
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.protocol.codec import FrameDecoder
from remote_kernel.protocol.handlers import LARGE_MARKER
from remote_kernel.protocol.landing import Landing
from remote_kernel.protocol.messages import OID, Ext, Kind, Op
from tests.hardening.rawpeer import RawPeer, frame, ref

MIB = 1 << 20
SIZE = 8 * MIB  # announced: two 4 MiB chunks, each offered a landing in the destination
CHUNK = 4 * MIB
SENT_EARLY = MIB  # the part of the first chunk sent before the stall

# The victim: connects to the hostile server, obtains, fails, fills memory with a pattern
# (where freed memory would be reused), then calls again on the same connection.
_VICTIM = textwrap.dedent("""
    import _thread, gc, socket, sys, threading
    import remote_kernel as rk
    from remote_kernel.core.connection import Connection
    from remote_kernel.net.transports.sockets import SocketTransport
    from remote_kernel.protocol.messages import Op

    port, how = int(sys.argv[1]), sys.argv[2]
    # A long-running process has freed large blocks before: glibc then serves blocks of
    # this size from its heap (not fresh mappings), where freed memory is reused at once.
    warm = bytes(16 << 20)
    del warm
    sock = socket.create_connection(("127.0.0.1", port))
    timeout = 1.5 if how == "timeout" else None
    conn = Connection(SocketTransport(sock, "hostile"), rk.VoidService, name="hostile",
                      config={"sync_request_timeout": timeout})
    proxy = conn.sync_request(Op.PING, None)
    if how == "stop":
        threading.Timer(1.5, _thread.interrupt_main).start()
    try:
        rk.obtain(proxy, progress=False)
    except (rk.RequestTimeout, KeyboardInterrupt) as error:
        print("obtain raised", type(error).__name__, error, flush=True)
    else:
        print("obtain returned", flush=True)
        sys.exit(3)
    gc.collect()
    guards = [bytes(8 << 20) for _ in range(4)]  # may reuse the freed destination
    small = [bytes(64) for _ in range(20000)]
    answer = conn.sync_request(Op.PING, "after", timeout=10)
    print("next call:", answer, flush=True)
    intact = all(guard.count(0) == len(guard) for guard in guards) and \\
        all(piece.count(0) == 64 for piece in small)
    print("memory intact:", intact, flush=True)
    print("closed:", conn.closed, flush=True)
    sys.exit(0 if intact and answer == "after" and not conn.closed else 4)
""")


def _announced() -> list:
    return [LARGE_MARKER, "bytes", [0], [SIZE],
            ref(9, 3, ["remote_kernel.protocol.values", "Snapshot", [], [], 0, ""])]


def _hostile_server(listener: socket.socket, log: list[str]) -> None:
    """Answer PING with a netref, OBTAIN with a large snapshot, then the first READ with
    a BUFFERS frame and part of its chunk; stall; when the next request comes, send the
    rest of the chunk (bytes of its choosing), the READ's late reply, then whole chunks
    of its choosing for the READs the victim sent ahead (pipelined), then the answer."""
    sock, _ = listener.accept()
    raw = RawPeer(sock)
    try:
        ping = raw.recv_kind((Kind.REQUEST,), timeout=10)
        raw.send([Kind.REPLY, ping[1], ref(5, 1, ["builtins", "object", [], [], 0, ""])])
        obtain = raw.recv_kind((Kind.REQUEST,), timeout=10)
        raw.send([Kind.REPLY, obtain[1], _announced()])
        read = raw.recv_kind((Kind.REQUEST,), timeout=10)
        log.append(f"read {read[2]} {read[4:]}")
        raw.send([Kind.BUFFERS, 1, b"\1", read[1]])
        raw.send_bytes(frame(b"\0" * CHUNK)[:4 + SENT_EARLY])
        after = raw.recv_kind((Kind.REQUEST,), timeout=20)  # the victim gave up: next call
        ahead = []
        while after[2] == Op.READ:  # sent ahead of the first one's reply
            ahead.append(after)
            after = raw.recv_kind((Kind.REQUEST,), timeout=20)
        log.append(f"next {after[2]} after {len(ahead)} READs ahead")
        raw.send_bytes(b"\xab" * (CHUNK - SENT_EARLY))  # the late bytes
        raw.send([Kind.REPLY, read[1], ExtType(Ext.BUFFER, OID.pack(0))])
        for late in ahead:  # whole chunks, each announced for its READ's offer
            raw.send([Kind.BUFFERS, 1, b"\1", late[1]])
            raw.send_bytes(frame(b"\xab" * late[5]))
            raw.send([Kind.REPLY, late[1], ExtType(Ext.BUFFER, OID.pack(0))])
        raw.send([Kind.REPLY, after[1], after[3]])
        time.sleep(1)
    except (OSError, EOFError, TimeoutError) as error:
        log.append(f"server: {error!r}")
    finally:
        sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["timeout", "stop"])
def test_a_read_abandoned_mid_frame_never_writes_into_freed_memory(how: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    log: list[str] = []
    server = threading.Thread(target=_hostile_server, args=(listener, log), daemon=True)
    server.start()
    try:
        victim = subprocess.run(
            [sys.executable, "-c", _VICTIM, str(listener.getsockname()[1]), how],
            capture_output=True, text=True, timeout=45, env=dict(os.environ),
        )
    finally:
        listener.close()
        server.join(5)
    report = f"exit {victim.returncode}\n{victim.stdout}\n{victim.stderr[-3000:]}\n{log}"
    assert log and log[0] == f"read {int(Op.READ)} [0, {CHUNK}]", report
    assert log[1] == f"next {int(Op.PING)} after 1 READs ahead", report  # (8 MiB: 2 chunks)
    assert victim.returncode == 0, report  # not 134 (abort), -11 / -6 (signals), 4
    expected = "RequestTimeout no reply from hostile" if how == "timeout" \
        else "KeyboardInterrupt"
    assert f"obtain raised {expected}" in victim.stdout, report
    assert "next call: after" in victim.stdout and "memory intact: True" in victim.stdout, \
        report



class _Owner:
    """Stands for the object whose memory a landing view shows (weakly referencable)."""

    def __init__(self, size: int) -> None:
        self.memory = bytearray(size)


def _landing_frames(size: int) -> tuple[FrameDecoder, Landing, weakref.ref]:
    owner = _Owner(size)
    landing = Landing(owner, memoryview(owner.memory))
    decoder = FrameDecoder(1 << 30)
    decoder.expect([landing])
    return decoder, landing, weakref.ref(owner)


def test_the_decoder_owns_a_landing_until_its_frame_ends() -> None:
    size = 2 * MIB
    decoder, landing, owner = _landing_frames(size)
    assert decoder.feed(frame(b"\x01" * size)[:MIB]) == []
    del landing  # the caller lets go mid-frame (without withdrawing, even)
    gc.collect()
    assert owner() is not None, "the memory being written was freed"
    rest = frame(b"\x01" * size)[MIB:] + frame(b"next")
    frames = decoder.feed(rest)
    assert len(frames) == 2 and bytes(frames[0]) == b"\x01" * size and frames[1] == b"next"
    del frames
    gc.collect()
    assert owner() is None  # let go once the frame ended


@pytest.mark.parametrize("when", ["mid-frame", "before its header"])
def test_a_withdrawn_landing_is_never_written_again(when: str) -> None:
    size = 2 * MIB
    decoder, landing, _ = _landing_frames(size)
    payload = frame(b"\xab" * size)
    if when == "mid-frame":
        assert decoder.feed(payload[:MIB]) == []
        landing.withdraw()
        assert landing.owner.memory[:MIB - 4] == b"\xab" * (MIB - 4)
        frames = decoder.feed(payload[MIB:] + frame(b"next"))
        assert landing.owner.memory[MIB - 4:] == bytes(size - MIB + 4)  # nothing more
    else:
        landing.withdraw()
        frames = decoder.feed(payload + frame(b"next"))
        assert landing.owner.memory == bytes(size)
    assert frames == [b"", b"next"]  # the drained frame comes out empty; the stream goes on
    assert decoder.pending == 0


class _ThrottledProxy:
    """A transparent loopback relay that passes the server's bytes on at ``rate`` bytes a
    second (None: as fast as they come): a slow link. ``up``: the client's bytes instead."""

    def __init__(self, port: int, rate: float | None, up: bool = False) -> None:
        self.rate = rate
        self.up = up
        self._target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        server = socket.create_connection(("127.0.0.1", self._target))
        self._sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server, self.up), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, not self.up),
                         daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(16 * 1024):
                target.sendall(data)
                rate = self.rate
                if slow and rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["bytes", "numpy"])
def test_stop_during_a_slow_large_obtain_leaves_the_connection_working(
        classic_server: Any, kind: str) -> None:
    if kind == "numpy":
        pytest.importorskip("numpy")
    proxy = _ThrottledProxy(classic_server.port, rate=MIB)  # a 4 MiB chunk takes 4 s
    conn = rk.connect("127.0.0.1", proxy.port, token=classic_server.token)
    try:
        conn.execute("import numpy\n"
                     "blob = memoryview(bytes(range(256)) * (64 * 1024))\n"  # 16 MiB
                     "array = numpy.arange(2 * 1024 * 1024, dtype=numpy.float64)")
        value = conn.namespace["blob" if kind == "bytes" else "array"]  # by reference
        stop = threading.Timer(1.0, _thread.interrupt_main)
        stop.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                rk.obtain(value, progress=False)
        finally:
            stop.cancel()
        # Stop came (and the cancel's grace ended) in the middle of a chunk's frame.
        assert conn._reader.decoder.pending > 0, "the transfer was not cut mid-frame"
        gc.collect()
        guards = [bytes(16 * MIB) for _ in range(2)]  # where freed memory is reused
        proxy.rate = None
        copy = rk.obtain(value, progress=False)
        if kind == "bytes":
            assert copy == bytes(range(256)) * (64 * 1024)
        else:
            import numpy

            assert numpy.array_equal(copy, numpy.arange(2 * 1024 * 1024,
                                                        dtype=numpy.float64))
        assert conn.eval("1 + 1") == 2 and not conn.closed
        assert all(guard.count(0) == len(guard) for guard in guards)
    finally:
        conn.close()
        proxy.close()

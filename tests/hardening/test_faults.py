"""Faults: a peer killed mid-call, a client killed while holding objects, a peer that stalls
halfway through a frame, and a flood of garbage connections."""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.codec import HEADER
from remote_kernel.protocol.messages import Kind, Op
from tests.hardening.rawpeer import RawPeer, frame, packb

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- a server killed mid-call ---------------------------------------------------------------


def test_sigkill_of_the_server_mid_call_fails_fast(start_server: Any) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    conn = server.connect(timeout=10)
    try:
        other = rk.async_(conn.root.echo)  # a second request kind, to fail as well
        outcome: dict[str, Any] = {}
        started = threading.Event()

        def call() -> None:
            started.set()
            try:
                conn.root.sleep(30)
            except BaseException as exc:  # noqa: BLE001 - recorded and checked below
                outcome["error"] = exc
                outcome["at"] = time.monotonic()

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        started.wait(5)
        _wait_for(lambda: conn.stats["requests"] >= 2, 5, "the call to be sent")
        time.sleep(0.2)  # the server is inside sleep()
        killed_at = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), rk.ConnectionClosed), outcome
        assert outcome["at"] - killed_at < 1.0
        assert f"127.0.0.1:{server.port}" in str(outcome["error"])
        later = time.monotonic()
        with pytest.raises(rk.ConnectionClosed):
            _ = other(1).value
        assert time.monotonic() - later < 0.5
    finally:
        conn.close()


# -- a client killed while holding objects -------------------------------------------------


class Holder(rk.Service):
    """Records connects and disconnects; hands out objects the tests can watch."""

    made: list[weakref.ref] = []
    disconnected: list[Connection] = []
    disconnect_event = threading.Event()

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn

    def on_disconnect(self, conn: Connection) -> None:
        Holder.disconnected.append(conn)
        Holder.disconnect_event.set()

    def exposed_make(self, n: int) -> list:
        items = [Thing(i) for i in range(n)]
        Holder.made.extend(weakref.ref(item) for item in items)
        return items

    def exposed_echo(self, value: Any) -> Any:
        return value


class Thing:
    def __init__(self, n: int) -> None:
        self.n = n

    def exposed_value(self) -> int:
        return self.n


CLIENT = """
import sys, time
sys.path.insert(0, {root!r})
import remote_kernel as rk
conn = rk.connect("127.0.0.1", {port}, timeout=10)
things = conn.root.make(50)
kept = [things[i] for i in range(50)]
print("holding", conn.local_object_count, flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder_server() -> Iterator[rk.Server]:
    Holder.made.clear()
    Holder.disconnected.clear()
    Holder.disconnect_event.clear()
    with rk.Server(Holder) as server:
        yield server


def test_sigkill_of_a_client_releases_its_objects(holder_server: rk.Server) -> None:
    survivor = rk.connect("127.0.0.1", holder_server.port, timeout=5)
    try:
        mine = survivor.root.make(3)
        first = mine[0]
        child = subprocess.Popen([sys.executable, "-c", CLIENT.format(
            root=str(ROOT), port=holder_server.port)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().startswith("holding")
            victim_conn = max(holder_server.connections, key=lambda c: c.local_object_count)
            assert victim_conn.local_object_count > 50
            Holder.disconnect_event.clear()
            killed_at = time.monotonic()
            child.send_signal(signal.SIGKILL)
            assert Holder.disconnect_event.wait(5), "on_disconnect did not run"
            assert time.monotonic() - killed_at < 2.0
        finally:
            child.kill()
            child.wait(5)
            if child.stdout:
                child.stdout.close()
        gone = Holder.disconnected[-1]
        assert gone.closed
        assert gone.local_object_count == 0
        _wait_for(lambda: gone not in holder_server.connections, 5, "the server to drop it")
        gc.collect()
        victims = Holder.made[3:]
        assert victims and all(ref() is None for ref in victims), "objects were not freed"
        # The other client is unaffected, and so are its objects.
        assert survivor.root.echo("still here") == "still here"
        assert first.value() == 0
        assert all(ref() is not None for ref in Holder.made[:3])
    finally:
        survivor.close()


# -- a peer that stalls halfway through a frame --------------------------------------------


def test_half_a_reply_then_silence_times_out_and_resyncs() -> None:
    left, right = socket.socketpair()
    client = Connection(SocketTransport(left, "staller"), rk.VoidService, name="staller")
    raw = RawPeer(right)
    try:
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                client.sync_request(Op.PING, b"a", timeout=1.0)
            except BaseException as exc:  # noqa: BLE001
                result["error"] = exc

        thread = threading.Thread(target=call)
        thread.start()
        seq = raw.recv_kind((Kind.REQUEST,))[1]
        reply = frame(packb([Kind.REPLY, seq, b"a"]))
        raw.send_bytes(reply[: len(reply) // 2])
        thread.join(5)
        assert isinstance(result.get("error"), rk.RequestTimeout)
        assert not client.closed
        # The rest arrives late: the stream is still in step, the next call works.
        raw.send_bytes(reply[len(reply) // 2:])
        answer = client.async_request(Op.PING, b"b")
        seq = raw.recv_kind((Kind.REQUEST,))[1]
        raw.send([Kind.REPLY, seq, b"b"])
        answer.wait(5)
        assert answer.value == b"b"
    finally:
        client.close()
        right.close()


@pytest.mark.serial
def test_a_stalled_client_blocks_no_one_else() -> None:
    with rk.Server(Holder, handshake_timeout=1.0) as server:
        stallers = []
        for partial in (b"\x00\x00", HEADER.pack(100) + b"half"):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(partial)  # mid-handshake: half a frame, then nothing
            stallers.append(sock)
        # After the handshake: a real connection that sends half a request and stalls.
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        transport = SocketTransport(sock, "stall")
        client_handshake(transport, None, 5)
        sock.sendall(HEADER.pack(1000) + b"\x94\x00")
        stallers.append(sock)
        started = time.monotonic()
        with rk.connect("127.0.0.1", server.port, timeout=5) as conn:
            assert conn.root.echo("fine") == "fine"
            assert conn.ping() < 0.5
        assert time.monotonic() - started < 1.0
        # The handshake deadline closes the two that stalled before authenticating.
        for sock in stallers[:2]:
            sock.settimeout(5)
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError:
                pass
            assert b"timed out" in data
        for sock in stallers:
            sock.close()


# -- a flood of garbage --------------------------------------------------------------------


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _garbage(rng: random.Random, n: int) -> bytes:
    kind = n % 4
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 65536))
    if kind == 1:
        return HEADER.pack(rng.randrange(1 << 31)) + rng.randbytes(rng.randrange(1, 4096))
    if kind == 2:
        return b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * rng.randrange(1, 100)
    return b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(500)  # TLS hello


def _flood(port: int, count: int, after_handshake: bool, seed: int) -> int:
    """Open ``count`` connections that send garbage; how many the server closed (seen as
    an end of stream or a reset within 10 s; a connection still open is not counted)."""
    rng = random.Random(seed)
    closed = 0
    lock = threading.Lock()

    def one(n: int, payload: bytes) -> None:
        nonlocal closed
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                if after_handshake:
                    client_handshake(SocketTransport(sock, "flood"), None, 10)
                    sock.settimeout(10)
                try:
                    sock.sendall(payload)
                    sock.shutdown(socket.SHUT_WR)  # then EOF, mid-frame for most
                except OSError:
                    pass
                try:
                    while sock.recv(65536):
                        pass
                except TimeoutError:
                    return  # still open after 10 s: not closed
                except OSError:
                    pass  # reset by the server: closed
                with lock:
                    closed += 1
        except rk.AuthenticationError:
            with lock:  # the server refused the handshake and closed
                closed += 1

    payloads = [_garbage(rng, n) for n in range(count)]
    for start in range(0, count, 50):  # 50 at a time: two cores are shared
        threads = [threading.Thread(target=one, args=(n, payloads[n]), daemon=True)
                   for n in range(start, min(count, start + 50))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    return closed


def test_200_garbage_connections_leave_the_server_well(start_server: Any) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    with server.connect(timeout=10) as conn:  # warm up: imports, first connection
        assert conn.root.echo(1) == 1
    _flood(server.port, 20, False, seed=1)
    before = _rss(server.pid)
    closed = _flood(server.port, 100, False, seed=2) + _flood(server.port, 100, True, seed=3)
    assert closed == 200
    with server.connect(timeout=10) as conn:
        assert conn.root.echo("alive") == "alive"
        assert conn.ping() < 1.0
    grown = _rss(server.pid) - before
    print(f"server RSS before {before / 2**20:.1f} MiB, after 200 garbage connections "
          f"{(before + grown) / 2**20:.1f} MiB (grew {grown / 2**20:.1f} MiB)")
    assert grown < 50 * 2**20
    assert server.process.poll() is None

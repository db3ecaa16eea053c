"""Before authentication a peer costs little: one absolute deadline that trickled bytes do
not extend, a 4 KiB buffer, a bounded number of pending connections (the rest closed at
once), and no accept() error ends the server. Timeouts are deadlines on both sides."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net import auth
from remote_kernel.net.auth import client_handshake, server_handshake
from remote_kernel.net.transports import memory_pair
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.codec import HEADER, frame, pack
from remote_kernel.protocol.messages import Kind, Op
from tests.hardening.conftest import EchoService
from tests.hardening.rawpeer import RawPeer, packb
from tests.hardening.rawpeer import frame as raw_frame

ROOT = Path(__file__).resolve().parents[2]


# The start of a TLS ClientHello announcing 512 bytes: valid as far as it goes.
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(501)


def _closed_within(sock: socket.socket, seconds: float, trickle: float = 0.2,
                   payload: bytes = bytes(10_000)) -> float | None:
    """Send one byte of ``payload`` every ``trickle`` seconds until the peer closes; how
    long that took (None if it was still open after ``seconds``)."""
    started = time.monotonic()
    for byte in payload:
        if time.monotonic() - started >= seconds:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        readable, _, _ = select.select([sock], [], [], trickle)
        if readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return time.monotonic() - started
            if not data:
                return time.monotonic() - started
    return None


@pytest.mark.serial
def test_trickled_bytes_do_not_extend_the_handshake_deadline() -> None:
    with rk.Server(EchoService, token="tok", handshake_timeout=1.0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            # A frame of 100 bytes announced, its bytes trickled: never complete in time.
            took = _closed_within(sock, 6.0, payload=HEADER.pack(100) + bytes(100))
        assert took is not None, "a peer trickling bytes stayed past the handshake deadline"
        assert took < 1.0 * 1.5 + auth.FAILURE_DELAY
        with rk.connect("127.0.0.1", server.port, token="tok", timeout=5) as conn:
            assert conn.root.echo(1) == 1


@pytest.mark.serial
def test_the_tls_handshake_shares_the_deadline(pki: dict[str, Any]) -> None:
    tls = {"cert": pki["server"].cert, "key": pki["server"].key}
    with rk.Server(EchoService, tls=tls, handshake_timeout=1.0) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            took = _closed_within(sock, 6.0, payload=CLIENT_HELLO)  # trickled byte by byte
        assert took is not None, "a trickled TLS handshake stayed past the deadline"
        assert took < 1.5


def test_the_handshake_reads_through_a_small_buffer() -> None:
    left, right = memory_pair()
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        reader=server_handshake(right, None, "Echo", 5)))
    thread.start()
    client_handshake(left, None, 5)
    thread.join(5)
    reader = result["reader"]
    assert len(reader.decoder._buf) <= 2 * auth.HANDSHAKE_LIMIT
    conn = Connection(right, EchoService, reader=reader)  # the connection proper: large
    try:
        assert len(reader.decoder._buf) >= 64 * 1024
    finally:
        conn.close()
        left.close()


def _greeting(sock: socket.socket) -> bytes | None:
    """The server's greeting, or None if it closed the connection without one."""
    sock.settimeout(2)
    try:
        data = sock.recv(65536)
    except OSError:
        return None
    return data or None


def _closed_by_server(sock: socket.socket, seconds: float = 2.0) -> bool:
    """True once the server closes ``sock`` (its greeting, if any, is read and dropped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def test_pending_connections_are_bounded_and_the_longest_waiting_make_room(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="remote_kernel.net.server")
    with rk.Server(EchoService, token="tok", max_pending=4) as server:
        socks = []
        for _ in range(12):
            socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            time.sleep(0.02)  # in order: the first ones wait longest
        try:
            deadline = time.monotonic() + 5
            while server.evictions < 8 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.evictions == 8 and server.refused == 0
            # The 8 that waited longest were shut down at once; the 4 newest still wait.
            assert all(_closed_by_server(sock) for sock in socks[:8])
            assert not any(_closed_by_server(sock, 0.2) for sock in socks[8:])
            with server._lock:
                assert len(server._pending) == 4 and not server._evicted  # threads ended
            assert any("makes room" in r.getMessage() for r in caplog.records)
        finally:
            for sock in socks:
                sock.close()
        with rk.connect("127.0.0.1", server.port, token="tok", timeout=5) as conn:
            assert conn.root.echo("in") == "in"


class _Strangers:
    """Keeps ``count`` connections open without the token, half silent, half trickling
    a byte every 0.2 s, and opens a new one whenever the server closes one."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.socks = [self._open() for _ in range(count)]
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for index, sock in enumerate(self.socks):
                try:
                    while sock.recv(65536):  # its greeting: dropped
                        pass
                    closed = True
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if not closed and index % 2:
                    try:
                        sock.send(b"\x00")
                    except OSError:
                        closed = True
                if closed:
                    sock.close()
                    try:
                        self.socks[index] = self._open()
                        self.reopened += 1
                    except OSError:
                        pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.mark.timeout(120)
def test_strangers_holding_every_slot_do_not_lock_out_the_token_holder() -> None:
    with rk.Server(EchoService, token="tok") as server:
        strangers = _Strangers(server.port, server.max_pending)
        try:
            deadline = time.monotonic() + 5
            while len(server._pending) < server.max_pending and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server._pending) == server.max_pending  # every slot is held
            took: list[float] = []
            failures: list[BaseException] = []
            for _ in range(10):
                started = time.monotonic()
                try:
                    with rk.connect("127.0.0.1", server.port, token="tok", timeout=5) as conn:
                        assert conn.root.echo("in") == "in"
                    took.append(time.monotonic() - started)
                except rk.RemoteKernelError as error:
                    failures.append(error)
                time.sleep(0.3)  # meanwhile the strangers take their slots back
            print(f"10 connects among {server.max_pending} strangers: {len(took)} in, "
                  f"slowest {max(took, default=0):.2f} s; {server.evictions} evictions, "
                  f"{strangers.reopened} strangers reconnected")
            assert not failures, failures
            assert max(took) < 3.0
            assert strangers.reopened >= 5  # the strangers did come back for their slots
        finally:
            strangers.stop()
        with rk.connect("127.0.0.1", server.port, token="tok", timeout=5) as conn:
            assert conn.root.echo("healthy") == "healthy"
        with server._lock:
            assert len(server._pending) + len(server._evicted) <= 2 * server.max_pending


def _start_serve(tmp: Path, nofile: int, name: str) -> tuple[subprocess.Popen, dict]:
    import json

    file = tmp / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        ["prlimit", f"--nofile={nofile}", sys.executable, "-m", "remote_kernel", "serve",
         "--service", "tests.hardening.conftest:EchoService", "--connection-file", str(file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    deadline = time.monotonic() + 20
    while not file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start: {process.stderr.read().decode()}")
        time.sleep(0.02)
    time.sleep(0.1)
    return process, json.loads(file.read_text())


@contextlib.contextmanager
def _serve(tmp: Path, nofile: int, name: str) -> Iterator[tuple[subprocess.Popen, dict]]:
    process, info = _start_serve(tmp, nofile, name)
    try:
        yield process, info
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr:
            process.stderr.close()


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


class _Pinger:
    """A real, authenticated client pinging the server the whole time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.worst = 0.0
        self.errors: list[BaseException] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                assert self.conn.root.echo(self.count) == self.count
            except BaseException as exc:  # noqa: BLE001 - recorded and checked
                self.errors.append(exc)
                return
            self.worst = max(self.worst, time.monotonic() - started)
            self.count += 1
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_2000_trickling_connections_under_1024_descriptors(tmp_path: Path) -> None:
    """The red-team case: without a token, 2,000 peers trickling one byte every 0.7 s at a
    server limited to 1,024 descriptors. It keeps serving a real client throughout, closes
    every trickler by the deadline, and stays small."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip("this test needs 2,200 descriptors of its own")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    with _serve(tmp_path, 1024, "trickle") as (process, info):
        conn = rk.connect("127.0.0.1", info["port"], token=info["token"], timeout=10)
        pinger = _Pinger(conn)
        time.sleep(0.5)
        baseline = _rss(process.pid)
        peak = baseline
        open_socks: list[socket.socket] = []
        made = closed = 0
        started = time.monotonic()
        next_trickle = started
        try:
            while made < 2000 or open_socks:
                now = time.monotonic()
                if now - started > 60:
                    break
                while made < 2000 and len(open_socks) < 1500:
                    try:
                        sock = socket.create_connection(("127.0.0.1", info["port"]), timeout=5)
                    except OSError:
                        made += 1
                        closed += 1
                        continue
                    sock.setblocking(False)
                    open_socks.append(sock)
                    made += 1
                if now >= next_trickle:
                    next_trickle = now + 0.7
                    for sock in list(open_socks):
                        try:
                            sock.send(b"\x00")
                        except OSError:
                            open_socks.remove(sock)
                            sock.close()
                            closed += 1
                poller = select.poll()  # select() cannot take descriptors over 1024
                by_fd = {sock.fileno(): sock for sock in open_socks}
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(50):
                    sock = by_fd[fd]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        open_socks.remove(sock)
                        sock.close()
                        closed += 1
                peak = max(peak, _rss(process.pid))
            elapsed = time.monotonic() - started
        finally:
            for sock in open_socks:
                sock.close()
            pinger.stop()
        assert process.poll() is None, "the server died"
        assert not pinger.errors, pinger.errors
        assert pinger.count > 20 and pinger.worst < 2.0, (pinger.count, pinger.worst)
        assert made == 2000 and closed == 2000 and not open_socks
        assert elapsed < 10 + 20, "tricklers outlived the handshake deadline"
        grown = peak - baseline
        print(f"2000 tricklers: closed in {elapsed:.1f} s, server RSS {baseline / 2**20:.0f} "
              f"-> peak {peak / 2**20:.0f} MiB, real client's worst echo {pinger.worst:.3f} s "
              f"over {pinger.count} echos")
        assert grown < 100 * 2**20
        assert conn.root.echo("still") == "still"
        conn.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_out_of_descriptors_the_server_sheds_and_survives(tmp_path: Path) -> None:
    """A server with so few descriptors that accept() fails with EMFILE: it drops the
    connections it cannot take, logs it, and is there for the next client."""
    with _serve(tmp_path, 40, "emfile") as (process, info):
        socks = []
        for _ in range(120):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", info["port"]), timeout=5))
        time.sleep(1.0)
        assert process.poll() is None, "the server died of EMFILE"
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                with rk.connect("127.0.0.1", info["port"], token=info["token"],
                                timeout=5) as conn:
                    assert conn.root.echo("alive") == "alive"
                break
            except rk.RemoteKernelError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert process.poll() is None


# -- timeouts are deadlines -----------------------------------------------------------------


def test_connect_waits_its_whole_timeout_for_a_late_greeting() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def late_server() -> None:
        sock, _ = listener.accept()
        with sock:
            time.sleep(2.0)  # a busy server: the greeting comes late, within the timeout
            server_handshake(SocketTransport(sock, "client"), None, "Late", 5)
            sock.recv(1)

    thread = threading.Thread(target=late_server, daemon=True)
    thread.start()
    try:
        conn = rk.connect("127.0.0.1", port, timeout=5)
        conn.close()
    finally:
        listener.close()
        thread.join(10)


@pytest.mark.serial
def test_connect_gives_up_at_its_timeout_when_no_greeting_comes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(rk.AuthenticationError, match="no remote_kernel greeting"):
            rk.connect("127.0.0.1", port, timeout=2.0)
        took = time.monotonic() - started
        assert 2.0 * 0.9 <= took <= 2.0 * 1.5, took
    finally:
        listener.close()


@pytest.mark.serial
def test_a_trickled_reply_does_not_extend_the_request_timeout() -> None:
    left, right = socket.socketpair()
    client = Connection(SocketTransport(left, "trickler"), rk.VoidService, name="trickler")
    raw = RawPeer(right)
    outcome: dict[str, Any] = {}

    def call() -> None:
        started = time.monotonic()
        try:
            client.sync_request(Op.PING, b"a", timeout=2.0)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=call)
    thread.start()
    try:
        seq = raw.recv_kind((Kind.REQUEST,))[1]
        reply = raw_frame(packb([Kind.REPLY, seq, b"a" * 64]))
        for byte in reply[:-1]:  # one byte every 0.3 s: the whole reply would take 23 s
            if not thread.is_alive():
                break
            right.sendall(bytes([byte]))
            time.sleep(0.3)
        thread.join(10)
        assert isinstance(outcome.get("error"), rk.RequestTimeout), outcome
        assert outcome["took"] <= 2.0 * 1.5, outcome["took"]
    finally:
        client.close()
        right.close()
        thread.join(5)


def test_a_poll_reads_what_is_there_without_waiting() -> None:
    """timeout=0 still takes every byte already received (a frame cut in pieces)."""
    left, right = socket.socketpair()
    client = Connection(SocketTransport(left, "p"), rk.VoidService, name="p")
    try:
        message = frame(pack([Kind.NOTIFY, 77]), 1 << 20)
        for byte in message:
            right.sendall(bytes([byte]))
        time.sleep(0.1)
        assert client.poll(0) is True
    finally:
        client.close()
        right.close()

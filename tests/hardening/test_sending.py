"""Sending is all or nothing, and never hangs: a message that is not sent leaves no trace
(type descriptors, releases, the object table), and a peer that stops reading cannot block
``close()``, a server's shutdown or SIGTERM of ``remote-kernel serve``; it is dropped."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.transports import memory_pair
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.messages import Kind, Op
from tests.hardening.rawpeer import RawPeer

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 20


class Keeper(rk.Service):
    """Holds what it is given; hands out objects."""

    def on_connect(self, conn: Connection) -> None:
        self.conn = conn
        self.kept: list[Any] = []

    def exposed_echo(self, *values: Any) -> Any:
        return values[0] if len(values) == 1 else values

    def exposed_keep(self, value: Any) -> int:
        self.kept.append(value)
        return len(self.kept)

    def exposed_fresh(self) -> Any:
        return Thing()

    def exposed_table_size(self) -> int:
        return self.conn.local_object_count

    def exposed_big(self, size: int) -> bytes:
        return b"x" * size

    def exposed_fail_loudly(self, obj: Any) -> None:
        raise Loud(obj)


class Loud(Exception):
    """Its text asks the peer: formatting it happens while the reply is being encoded."""

    def __str__(self) -> str:
        return f"loud: {self.args[0]}"


class Thing:
    def exposed_name(self) -> str:
        return "thing"


class Other:
    pass


@pytest.fixture
def linked() -> Iterator[tuple[Connection, Connection]]:
    """(client, server side) over a socketpair, the server served from a thread."""
    left, right = memory_pair("client", "server")
    server = Connection(right, Keeper, config={"max_message_size": LIMIT}, name="client")
    serving = server.serve_in_background()
    client = Connection(left, rk.VoidService, config={"max_message_size": LIMIT},
                        name="server")
    yield client, server
    client.close()
    server.close()
    serving.stop(5)


def test_a_type_described_in_a_message_not_sent_is_described_again(
        linked: tuple[Connection, Connection]) -> None:
    client, _ = linked
    with pytest.raises(rk.ProtocolError, match="max_message_size"):
        client.root.echo(Other(), b"x" * (2 * LIMIT))  # boxed, then too large: not sent
    other = Other()
    # The peer never saw Other's descriptor: this message must carry it.
    assert client.root.echo(other) is other
    assert not client.closed


def test_objects_boxed_into_a_message_not_sent_leave_the_table(
        linked: tuple[Connection, Connection]) -> None:
    client, _ = linked
    assert client.root.echo(1) == 1
    before = client.local_object_count
    for _ in range(3):
        with pytest.raises(rk.ProtocolError):
            client.root.echo(Other(), Thing(), b"x" * (2 * LIMIT))
    assert client.local_object_count == before


def test_releases_taken_by_a_message_not_sent_go_with_the_next(
        linked: tuple[Connection, Connection]) -> None:
    client, server = linked
    root = client.root
    base = root.table_size()
    things = [root.fresh() for _ in range(5)]
    assert root.table_size() == base + 5
    del things
    gc.collect()
    with pytest.raises(rk.ProtocolError):
        root.echo(b"x" * (2 * LIMIT))  # would have carried the five releases
    assert client.ping() < 5
    deadline = time.monotonic() + 5
    while root.table_size() != base and time.monotonic() < deadline:
        time.sleep(0.02)
    assert root.table_size() == base, "the releases were lost with the failed message"


def test_a_value_that_cannot_be_encoded_leaves_no_trace(
        linked: tuple[Connection, Connection]) -> None:
    client, _ = linked
    assert client.root.echo(1) == 1
    before = client.local_object_count
    with pytest.raises(rk.ProtocolError, match="cannot encode"):
        client.root.echo(Other(), "\ud800")  # boxed, then msgpack refuses the surrogate
    assert client.local_object_count == before
    other = Other()
    assert client.root.echo(other) is other


def _silent_peer() -> tuple[Connection, socket.socket]:
    """A connection whose peer never reads a byte."""
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return Connection(SocketTransport(left, "silent"), rk.VoidService, name="silent"), right


def _send_in_thread(conn: Connection, payload: bytes) -> tuple[threading.Thread, dict]:
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            conn.async_request(Op.PING, payload)
        except BaseException as exc:  # noqa: BLE001 - recorded and checked
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def test_close_returns_against_a_peer_that_reads_nothing() -> None:
    conn, peer = _silent_peer()
    try:
        thread, outcome = _send_in_thread(conn, b"x" * (32 << 20))
        time.sleep(0.5)
        assert thread.is_alive(), "the send should be stuck on the full window"
        closer = threading.Thread(target=conn.close, daemon=True)
        started = time.monotonic()
        closer.start()
        closer.join(10)
        took = time.monotonic() - started
        assert not closer.is_alive(), "close() hung behind a stuck send"
        assert took < 5.0, took
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), rk.ConnectionClosed), outcome
        print(f"close() against a non-reading peer: {took:.2f} s")
    finally:
        conn.close()
        peer.close()


def test_a_peer_that_stops_reading_is_dropped() -> None:
    conn, peer = _silent_peer()
    conn._transport.send_timeout = 1.0
    try:
        started = time.monotonic()
        thread, outcome = _send_in_thread(conn, b"x" * (32 << 20))
        thread.join(10)
        assert isinstance(outcome.get("error"), rk.ConnectionClosed), outcome
        assert outcome["at"] - started < 1.0 + 2.0
        assert conn.closed and "stopped reading" in conn.close_reason
    finally:
        conn.close()
        peer.close()


def _stuck_client(port: int, token: str | None, request: list) -> socket.socket:
    """An authenticated client that asks for a large reply and never reads it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    reader = client_handshake(SocketTransport(sock, "stuck"), token, 5)
    raw = RawPeer(sock, reader)
    root = raw.getroot()
    raw.send([Kind.REQUEST, 1, Op.CALLATTR, *request(root)])
    return sock


def test_server_close_returns_with_a_stuck_client() -> None:
    from tests.hardening.rawpeer import peerref

    server = rk.Server(Keeper).serve_in_background()
    stuck = _stuck_client(server.port, None,
                          lambda root: [peerref(root), "big", [64 << 20], None])
    try:
        time.sleep(1.0)  # the server is now blocked sending the reply
        started = time.monotonic()
        closer = threading.Thread(target=server.close, daemon=True)
        closer.start()
        closer.join(15)
        assert not closer.is_alive(), "Server.close() hung behind a stuck client"
        assert time.monotonic() - started < 5.0
    finally:
        server.close()
        stuck.close()


@pytest.mark.timeout(60)
def test_sigterm_of_serve_with_a_stuck_client_exits_and_removes_its_file(
        tmp_path: Path) -> None:
    from tests.conftest import ServerProcess
    from tests.hardening.rawpeer import peerref

    server = ServerProcess(tmp_path, "--classic", name="stuck")
    try:
        stuck = _stuck_client(server.port, server.token, lambda root: [
            peerref(root), "eval", ["b'x' * (256 << 20)"], None])
        try:
            time.sleep(2.0)
            started = time.monotonic()
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                pytest.fail("remote-kernel serve did not exit on SIGTERM")
            assert time.monotonic() - started < 5.0
            assert not server.file.exists(), "the connection file was left behind"
        finally:
            stuck.close()
    finally:
        server.stop()


def test_a_pipe_peer_that_reads_nothing_cannot_block_close() -> None:
    from remote_kernel.net.transports.pipes import PipeTransport

    to_peer_r, to_peer_w = os.pipe()
    from_peer_r, from_peer_w = os.pipe()
    conn = Connection(PipeTransport(from_peer_r, to_peer_w, "pipe"), rk.VoidService,
                      name="pipe")
    try:
        thread, outcome = _send_in_thread(conn, b"x" * (8 << 20))
        time.sleep(0.3)
        started = time.monotonic()
        conn.close()
        assert time.monotonic() - started < 5.0
        thread.join(5)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), rk.ConnectionClosed), outcome
    finally:
        conn.close()
        for fd in (to_peer_r, from_peer_w):
            os.close(fd)


def test_encoding_that_asks_the_peer_does_not_hang(
        linked: tuple[Connection, Connection]) -> None:
    """An exception whose text (or Python 3.12's name suggestions) makes a request to the
    peer while the reply is being encoded: the request fails at once instead of waiting for
    the send lock its own thread holds, and the reply goes out."""
    client, _ = linked
    started = time.monotonic()
    with pytest.raises(rk.RemoteError):
        client.sync_request(Op.CALLATTR, client.root, "fail_loudly", (Thing(),), None,
                            timeout=10)
    assert time.monotonic() - started < 5
    assert client.root.echo("after") == "after"

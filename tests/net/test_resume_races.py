"""Resumes that race and sessions a server may keep (red-team findings), against real server
processes on loopback: many resumes of one session at once leave one link and no descriptor,
and calls still run once; the sessions a server keeps while their links are down are bounded
server-wide; a negative acknowledgement closes the connection."""

from __future__ import annotations

import json
import os
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
from remote_kernel.net.auth import Resume, client_handshake
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.messages import Kind, Op
from tests.conftest import ROOT, ServerProcess
from tests.hardening.rawpeer import RawPeer
from tests.net.test_resume import SLOW_CALL, ResettingRelay

pytestmark = pytest.mark.timeout(120)


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _race_resumes(port: int, token: str | None, resume: Resume, count: int
                  ) -> list[socket.socket]:
    """``count`` resumes of one session at once, with its owner's id and secret; the
    sockets (the racers keep them open and never read or send again)."""
    sockets: list[socket.socket] = []
    barrier = threading.Barrier(count)
    lock = threading.Lock()

    def race() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with lock:
            sockets.append(sock)
        barrier.wait(10)
        try:
            client_handshake(SocketTransport(sock, "racer"), token, 10, resume)
        except (rk.AuthenticationError, rk.ConnectionClosed, OSError):
            pass  # replaced by a later one, or told to try again: what a racer may get

    threads = [threading.Thread(target=race, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sockets


def test_concurrent_resumes_by_the_owner_leave_one_link_and_calls_run_once(
        tmp_path: Path) -> None:
    """Before: links replaced without being closed (descriptors kept for good), handshake
    threads spinning in _settle, the session's reader blocked on a replaced link, and every
    later resume of the session hanging."""
    server = ServerProcess(tmp_path, "--classic", name="races")
    try:
        with server.connect() as conn:
            conn.execute(SLOW_CALL)
            slow, items = conn.namespace["slow"], conn.eval("[0]")
            session = conn._transport
            before = _descriptors(server.pid)
            for round_ in range(3):
                result: list[Any] = []
                caller = threading.Thread(target=lambda n=round_, out=result: out.append(slow(n)))
                caller.start()
                time.sleep(0.2)  # the call runs on the server while its link is fought over
                resume = Resume(session.session_id, session.secret, session.received)
                racers = _race_resumes(server.port, server.token, resume, 20)
                caller.join(60)
                assert result == [round_ * 2]  # its reply arrived, once
                items.append(round_ + 1)  # the owner's session works on its own link
                for sock in racers:
                    sock.close()
            assert list(conn.eval("calls")) == [0, 1, 2]  # each call ran once
            assert list(items) == [0, 1, 2, 3]
            assert conn.state == "open"
            # Every replaced link is closed: the server holds what it held before.
            assert _wait_for(lambda: _descriptors(server.pid) <= before, 10), \
                (before, _descriptors(server.pid))
    finally:
        server.stop()


def test_a_resume_abandoned_half_way_is_replaced_by_the_next(tmp_path: Path) -> None:
    """The owner's client gives up a resume after RECONNECT_TIMEOUT on a slow server and
    starts another: the first, still under way on the server, must not hold the session."""
    server = ServerProcess(tmp_path, "--classic", name="abandoned")
    try:
        with server.connect() as conn:
            items = conn.eval("[1]")
            session = conn._transport
            before = _descriptors(server.pid)
            resume = Resume(session.session_id, session.secret, session.received)
            abandoned = _race_resumes(server.port, server.token, resume, 1)  # never goes on
            items.append(2)  # the owner's own resume replaces it
            assert list(items) == [1, 2] and conn.state == "open"
            for sock in abandoned:
                sock.close()
            assert _wait_for(lambda: _descriptors(server.pid) <= before, 10)
    finally:
        server.stop()


# -- what a server keeps for sessions whose link is down ------------------------------------

SERVER = r"""
import json, sys
import remote_kernel as rk

class Blob(rk.Service):  # a narrow service: at most 1 MiB a call
    def exposed_blob(self, size):
        return b"\1" * min(int(size), 1 << 20)

server = rk.Server(Blob, token=sys.argv[1], config=json.loads(sys.argv[2]))
print(server.port, flush=True)
server.start()
"""
TOKEN = "detached-sessions-token"


@pytest.fixture
def start_bounded() -> Iterator[Any]:
    processes: list[subprocess.Popen] = []

    def start(**config: Any) -> int:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVER, TOKEN, json.dumps(config)],
            stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
        processes.append(process)
        return int(process.stdout.readline())  # type: ignore[union-attr]

    yield start
    for process in processes:
        process.kill()
        process.wait(10)
        process.stdout.close()  # type: ignore[union-attr]


def _detach(relay: ResettingRelay, conn: rk.Connection) -> None:
    """Cut the link and keep it down: the session is kept on the server, detached."""
    relay.down = True
    relay.cut()
    assert _wait_for(lambda: conn.state == "unreachable", 10)
    time.sleep(0.3)  # the server notices the reset too


@pytest.mark.parametrize("bound, calls", [
    ({"max_detached_sessions": 1}, 0),
    ({"max_detached_bytes": 6 << 20}, 4),  # each session keeps 4 MiB unacknowledged
])
def test_past_the_bound_the_session_detached_longest_ago_ends(
        start_bounded: Any, monkeypatch: pytest.MonkeyPatch, bound: dict, calls: int) -> None:
    """Before: every session kept up to 64 MiB unacknowledged for resume_window (300 s) after
    its link dropped, and nothing bounded the number of sessions."""
    monkeypatch.setattr(Connection, "_send_ack", lambda self: None)  # a client that never ACKs
    port = start_bounded(**bound)
    relays = [ResettingRelay(("127.0.0.1", port)) for _ in range(3)]
    conns = [rk.connect("127.0.0.1", relay.port, token=TOKEN) for relay in relays]
    try:
        for conn in conns:
            for _ in range(calls):
                assert len(conn.root.blob(1 << 20)) == 1 << 20
        _detach(relays[0], conns[0])
        _detach(relays[1], conns[1])  # past the bound: the first one ends on the server
        for relay in relays:
            relay.down = False
        with pytest.raises(rk.ConnectionClosed, match="no longer has this session"):
            conns[0].root.blob(1)
        assert conns[0].state == "closed"
        assert conns[1].root.blob(10) == b"\1" * 10  # resumed
        assert conns[2].root.blob(10) == b"\1" * 10  # its link never went down
        assert conns[1].state == conns[2].state == "open"
    finally:
        for conn in conns:
            conn.close()
        for relay in relays:
            relay.close()


def test_the_bounds_are_config_keys_that_refuse_negative_values() -> None:
    from remote_kernel.config import make_config

    settings = make_config(None)
    assert settings.max_detached_sessions == 64
    assert settings.max_detached_bytes == 256 << 20
    for key in ("max_detached_sessions", "max_detached_bytes"):
        with pytest.raises(ValueError, match=key):
            make_config({key: -1})
        with pytest.raises(ValueError, match=key):
            make_config({key: 1.5})


# -- acknowledgements --------------------------------------------------------------------------


@pytest.mark.parametrize("count", [-1, -(1 << 40)])
def test_a_negative_acknowledgement_closes_the_connection(tmp_path: Path, count: int) -> None:
    server = ServerProcess(tmp_path, "--classic", name="ack")
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        peer = RawPeer(sock, client_handshake(SocketTransport(sock, "peer"), server.token, 10))
        peer.getroot()
        peer.send([Kind.NOTIFY, Op.ACK, count])
        assert peer.closed_by_victim(5)
        sock.close()
    finally:
        server.stop()

"""Sessions resumed over real TCP on loopback, against real server processes: the link is
cut under the connection by a relay that resets both of its sockets (what a middlebox that
lost its state, or a dead Wi-Fi link noticed by keepalive, looks like to both ends)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(90)


class ResettingRelay:
    """Forwards bytes between clients and a target; ``cut()`` resets every link it holds
    (RST both ways), and later connections are forwarded again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self.down = False  # True: every new link is reset at once (the link is down)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            with self._lock:
                self._links += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for sock in links:
            try:  # wakes the pump blocked in recv() (a close alone would not, on Linux)
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        time.sleep(0.01)
        for sock in links:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # with no lingering: a reset, not an end of stream

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("resume"), "--classic", name="resume")
    yield process
    process.stop()


@pytest.fixture
def relay(server: ServerProcess) -> Iterator[ResettingRelay]:
    relay = ResettingRelay(("127.0.0.1", server.port))
    yield relay
    relay.close()


def _connect(relay: ResettingRelay, server: ServerProcess, **config: Any) -> rk.Connection:
    return rk.connect("127.0.0.1", relay.port, token=server.token, config=config or None)


def test_netrefs_survive_a_reset_link(relay: ResettingRelay, server: ServerProcess) -> None:
    with _connect(relay, server) as conn:
        items = conn.eval("[1, 2, 3]")
        pid = conn.modules.os.getpid()
        relay.cut()
        items.append(4)  # goes over a new link, in the same session
        assert list(items) == [1, 2, 3, 4]
        assert conn.modules.os.getpid() == pid
        assert relay.accepted == 2
        assert conn.state == "open"


# A remote function that records each call and takes a second: run once, or twice?
SLOW_CALL = ("calls = []\n"
             "def slow(x):\n"
             "    import time\n"
             "    calls.append(x)\n"
             "    time.sleep(1.0)\n"
             "    return x * 2\n")


def test_a_call_in_flight_returns_once(relay: ResettingRelay, server: ServerProcess) -> None:
    with _connect(relay, server) as conn:
        conn.execute(SLOW_CALL)
        slow = conn.namespace["slow"]
        result: list[Any] = []
        caller = threading.Thread(target=lambda: result.append(slow(21)))
        caller.start()
        time.sleep(0.4)
        relay.cut()
        caller.join(30)
        assert result == [42]
        assert list(conn.eval("calls")) == [21]


def test_many_cuts_under_traffic_lose_and_repeat_nothing(relay: ResettingRelay,
                                                         server: ServerProcess) -> None:
    with _connect(relay, server) as conn:
        conn.execute("seen = []")
        seen = conn.namespace["seen"]
        stop = threading.Event()
        cuts = []

        def cutter() -> None:
            while not stop.wait(0.1) and len(cuts) < 6:
                relay.cut()
                cuts.append(time.monotonic())

        thread = threading.Thread(target=cutter, daemon=True)
        thread.start()
        count = 0
        try:
            while thread.is_alive() and count < 20000:  # bounded, ends by itself
                seen.append(count)
                count += 1
        finally:
            stop.set()
            thread.join(5)
        assert list(seen) == list(range(count))
        assert len(cuts) == 6 and relay.accepted >= 4


def test_a_large_copy_survives_a_cut(relay: ResettingRelay, server: ServerProcess) -> None:
    with _connect(relay, server) as conn:
        conn.execute("import os\ndata = os.urandom(24 << 20)")
        timer = threading.Timer(0.05, relay.cut)
        timer.start()
        copy = rk.obtain(conn.namespace["data"])
        timer.join()
        assert copy == rk.obtain(conn.namespace["data"])


def test_a_server_that_exited_is_reported_at_once(tmp_path: Path) -> None:
    process = ServerProcess(tmp_path, "--classic", name="exits")
    try:
        conn = process.connect()
        items = conn.eval("[1]")
        process.process.kill()  # no last word: the session sees a link end, then nobody
        process.process.wait(10)
        start = time.monotonic()
        with pytest.raises(rk.ConnectionClosed, match="not running any more"):
            items.append(2)
        assert time.monotonic() - start < 5
        assert conn.state == "closed"
    finally:
        process.stop()


def test_a_restarted_server_refuses_the_old_session_at_once(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path, "--classic", name="first")
    relay = ResettingRelay(("127.0.0.1", first.port))
    second = None
    try:
        conn = rk.connect("127.0.0.1", relay.port, token=first.token)
        items = conn.eval("[1]")
        first.stop()
        second = ServerProcess(tmp_path, "--classic", "--token-file", str(first.token_file),
                               name="second")
        relay.target = ("127.0.0.1", second.port)
        relay.cut()
        with pytest.raises(rk.ConnectionClosed, match="no longer has this session"):
            items.append(2)
        assert conn.state == "closed"
    finally:
        relay.close()
        first.stop()
        if second is not None:
            second.stop()


def test_state_is_unreachable_while_the_link_is_down(relay: ResettingRelay,
                                                     server: ServerProcess) -> None:
    conn = _connect(relay, server, resume_window=2.0)
    items = conn.eval("[1]")
    relay.down = True  # every reconnect fails
    relay.cut()
    deadline = time.monotonic() + 5
    while conn.state != "unreachable" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert conn.state == "unreachable"
    with pytest.raises(rk.ConnectionClosed, match="unreachable for 2 s"):
        items.append(2)
    assert conn.state == "closed"


def test_a_tls_session_resumes_over_a_new_tls_link(tmp_path: Path) -> None:
    certs = pytest.importorskip("tests.hardening.certs", reason="needs cryptography")
    ca = certs.CertificateAuthority(tmp_path, "rk-resume-ca")
    pair = ca.issue("server")
    token = "tls-resume-token"
    with rk.Server(rk.ClassicService, token=token,
                   tls={"cert": pair.cert, "key": pair.key}) as server:
        relay = ResettingRelay(("127.0.0.1", server.port))
        try:
            with rk.connect("127.0.0.1", relay.port, token=token,
                            tls={"ca": ca.ca}) as conn:
                items = conn.eval("[1]")
                relay.cut()
                items.append(2)  # a new TCP link, a new TLS session, the same session
                assert list(items) == [1, 2]
                assert relay.accepted == 2
                assert conn._transport.link.sock.version()  # still TLS
        finally:
            relay.close()


def test_a_unix_socket_session_resumes_behind_a_bridge(tmp_path: Path) -> None:
    """A unix socket fails only where a bridge stands in between (an ssh channel, see
    net/sshserve.py, whose server marks its sessions bridged): then the session resumes."""
    path = str(tmp_path / "rk.sock")
    with rk.Server(rk.ClassicService, unix_path=path) as server:
        sessions = []
        add = server.sessions.add

        def bridged(session_id: bytes, session: Any) -> None:
            session.bridged = True
            sessions.append(session)
            add(session_id, session)

        server.sessions.add = bridged  # type: ignore[method-assign]
        with rk.connect_unix(path) as conn:
            items = conn.eval("[1]")
            conn._transport.link_lost("the bridge went away")
            items.append(2)
            assert list(items) == [1, 2]
            assert len(sessions) == 1 and conn.state == "open"

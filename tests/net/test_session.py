"""The resumable session layer (net/session.py) over real sockets: a link that dies under a
connection is replaced, every byte arrives once, netrefs and calls in flight survive."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.session import ResendStore, ResumableTransport, SessionRefused
from remote_kernel.net.transports.sockets import SocketTransport

pytestmark = pytest.mark.timeout(60)


def test_resend_store_keeps_what_is_unacknowledged() -> None:
    store = ResendStore(limit=100)
    store.add(b"abcdef")
    store.add(bytearray(b"ghij"))  # mutable: copied
    store.add(memoryview(b"klmn"))
    assert store.end == 14
    store.acknowledge(3)
    assert b"".join(bytes(p) for p in store.since(5)) == b"fghijklmn"
    assert store.since(2) is None  # acknowledged, let go
    assert store.since(15) is None  # never sent
    assert store.since(14) == []


def test_resend_store_bound_lets_go_and_refuses_resume_from_before() -> None:
    store = ResendStore(limit=10)
    for _ in range(5):
        store.add(b"12345")
    assert store.kept <= 10
    assert store.since(0) is None  # what a resume from 0 needs is gone: fail cleanly
    assert b"".join(bytes(p) for p in store.since(15)) == b"1234512345"


def test_mutable_buffers_are_copied_so_a_resend_is_what_was_sent() -> None:
    store = ResendStore()
    data = bytearray(b"before")
    store.add(data)
    data[:] = b"AFTER!"
    assert bytes(store.since(0)[0]) == b"before"
    large = bytearray(b"\1" * (8 << 20))  # (copied with huge pages: uninit.copy_bytes)
    store.add(large)
    large[:] = bytes(len(large))
    kept = store.since(0)
    assert type(kept[1]) is bytes and kept[1] == b"\1" * (8 << 20)


class SessionPair:
    """A classic server connection and a client connection over resumable transports on
    a socketpair; ``cut()`` kills the link, the client's reconnect makes a new socketpair
    and resumes, as the resume handshake does over TCP."""

    def __init__(self, window: float = 30.0, refuse: bool = False,
                 unreachable_after: float = 5.0) -> None:
        self.refuse = refuse
        self.reopened = 0
        # A cut is two steps; a reconnect waits for both. (A unix socketpair ends with an
        # orderly close: a client link dropped after a quick resume would look like the
        # client's goodbye to the server, which ends the session then, as it should.)
        self._cutting = threading.Lock()
        a, b = socket.socketpair()
        self.server_rt = ResumableTransport(
            SocketTransport(b, "client"), session_id=b"s" * 16,
            unreachable_after=unreachable_after, resume_window=window)
        self.client_rt = ResumableTransport(
            SocketTransport(a, "server"), session_id=b"s" * 16, unreachable_after=5,
            resume_window=window, reopen=self._reopen)
        self.server = Connection(self.server_rt, rk.ClassicService)
        self.thread = threading.Thread(target=self.server.serve_all, daemon=True)
        self.thread.start()
        self.client = Connection(self.client_rt)

    def _reopen(self, received: int) -> tuple[SocketTransport, int, bytes]:
        with self._cutting:
            self.reopened += 1
        if self.refuse:
            raise SessionRefused("the server restarted: the session is gone")
        a, b = socket.socketpair()
        server_received = self.server_rt.take_over()
        threading.Thread(target=self.server_rt.attach,
                         args=(SocketTransport(b, "client"), received), daemon=True).start()
        return SocketTransport(a, "server"), server_received, b""

    def cut(self) -> None:
        """Both ends of the link die at once (as after a silent cut, once noticed)."""
        with self._cutting:
            self.server_rt.link_lost("test cut")
            self.client_rt.link_lost("test cut")

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def pair():
    pair = SessionPair()
    yield pair
    pair.close()


def test_netrefs_survive_a_replaced_link(pair: SessionPair) -> None:
    items = pair.client.eval("[1, 2, 3]")
    assert pair.client.state == "open"
    pair.cut()
    items.append(4)  # waits for the resume, then runs
    assert list(items) == [1, 2, 3, 4]
    assert pair.client.state == "open"
    assert pair.reopened == 1


def test_a_call_in_flight_completes_once_across_a_resume(pair: SessionPair) -> None:
    pair.client.execute(
        "calls = []\n"
        "def slow(x):\n"
        "    import time\n"
        "    calls.append(x)\n"
        "    time.sleep(0.8)\n"
        "    return x * 2\n")
    slow = pair.client.namespace["slow"]
    result: list = []
    caller = threading.Thread(target=lambda: result.append(slow(21)))
    caller.start()
    time.sleep(0.3)  # the request arrived and runs
    pair.cut()
    caller.join(20)
    assert result == [42]
    assert list(pair.client.eval("calls")) == [21]  # it ran once


def test_requests_sent_while_unreachable_are_delivered_once(pair: SessionPair) -> None:
    pair.client.execute("seen = []")
    seen = pair.client.namespace["seen"]
    pair.client_rt._reopen = lambda received: (_ for _ in ()).throw(OSError("link down"))
    pair.cut()
    assert pair.client.state == "unreachable"
    done = threading.Event()

    def call() -> None:
        seen.append("x")
        done.set()

    threading.Thread(target=call, daemon=True).start()
    time.sleep(0.5)
    assert not done.is_set()  # waits for the link, no error
    pair.client_rt._reopen = pair._reopen
    assert done.wait(10)
    assert list(seen) == ["x"]


def test_bulk_one_way_traffic_is_acknowledged(pair: SessionPair) -> None:
    data = pair.client.eval("b'x' * (8 << 20)")
    assert len(data) == 8 << 20
    # The client acknowledged as it read, so the server keeps little for re-sending.
    pair.client.ping()
    time.sleep(0.2)
    pair.client.ping()
    assert pair.server_rt.store.kept < 1 << 20


def test_a_refused_resume_closes_with_one_line() -> None:
    pair = SessionPair(refuse=True)
    try:
        items = pair.client.eval("[1]")
        pair.cut()
        with pytest.raises(rk.ConnectionClosed, match="server restarted"):
            items.append(2)
        assert pair.client.state == "closed"
    finally:
        pair.close()


def test_the_window_ends_the_session_in_bounded_time() -> None:
    pair = SessionPair(window=1.5)
    try:
        items = pair.client.eval("[1]")
        pair.client_rt._reopen = lambda received: (_ for _ in ()).throw(OSError("down"))
        pair.cut()
        start = time.monotonic()
        with pytest.raises(rk.ConnectionClosed, match="unreachable for 1.5 s"):
            items.append(2)
        assert time.monotonic() - start < 6
        # The server side let the session go too, and freed its objects.
        deadline = time.monotonic() + 5
        while not pair.server.closed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pair.server.closed
        assert pair.server.local_object_count == 0
    finally:
        pair.close()


def test_an_orderly_close_of_the_client_frees_the_server_session_at_once(
        pair: SessionPair) -> None:
    """End of stream: the client's process ended (a client that gives up a link to resume
    resets it instead), so the server frees its objects at once, as without sessions."""
    pair.client.eval("[1]")
    pair.client_rt._reopen = None  # (this client never comes back)
    pair.client_rt._raw.sock.close()  # its process ended: end of stream
    deadline = time.monotonic() + 5
    while not pair.server.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pair.server.closed
    assert pair.server.local_object_count == 0


def test_a_bridged_server_keeps_the_session_after_an_end_of_stream(pair: SessionPair) -> None:
    """Behind an ssh bridge an end of stream is the bridge's, not the client's."""
    pair.server_rt.bridged = True
    items = pair.client.eval("[1]")
    pair.client_rt._raw.sock.close()  # the bridge closed; the client comes back
    time.sleep(0.3)
    assert not pair.server.closed
    pair.client_rt.link_lost("bridge gone")
    items.append(2)
    assert list(items) == [1, 2]

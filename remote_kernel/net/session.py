"""Sessions that outlive their transport: the resumable layer under a Connection.

Each direction of a session is one byte stream, counted from the end of the first
handshake. The sender keeps what it sent until the peer acknowledges it (``Op.ACK``
notifications, see core/connection.py): views of what was sent where those bytes cannot
change, copies where they could. The receiver counts what it received. When the transport
dies the session becomes "unreachable": sends are kept, reads wait. The client opens a new
transport and runs the resume handshake (net/auth.py), which tells each side how much of
its stream the other received; each side re-sends the rest. The Connection above sees one
unbroken stream, so a request is received, and run, once, and its reply arrives once.

What is kept for re-sending is bounded (``RESEND_LIMIT``). Past the bound the oldest bytes
are let go; a resume that would need them fails cleanly (the session closes) rather than
resuming wrongly. A server also bounds what all its detached sessions keep (net/detached.py).

On the server, one resume of a session counts at a time: each resume claims the session
(take_over), which drops the link in use and the link of any resume still under way; only
the link of the latest claim may attach. However many resumes race, one link remains.
"""

from __future__ import annotations

import errno
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from remote_kernel.core.transport import StopMidRead, Transport
from remote_kernel.errors import AuthenticationError, ConnectionClosed, ProtocolError
from remote_kernel.net.resend import RESEND_LIMIT, ResendStore

log = logging.getLogger("remote_kernel.net.session")

ACK_EVERY = 256 << 10  # a receiver acknowledges at least this often (bytes received)
RECONNECT_FIRST, RECONNECT_MAX = 0.2, 1.5  # backoff between reconnect attempts (seconds)
MONITOR_SLICE = 0.5  # how often the monitor looks at idle sessions' sockets
RECONNECT_TIMEOUT = 2.0  # one reconnect attempt (TCP connect, TLS, resume handshake)
SETTLE_TIMEOUT = 5.0  # the longest a resume waits for the reader to leave a dropped link

Reopen = Callable[[int], "tuple[Transport, int, bytes]"]


class SessionRefused(ConnectionClosed):
    """The server answered a resume with a refusal (it restarted, or the session ended):
    no later attempt can succeed."""


class ResumableTransport(Transport):
    """A transport whose underlying link may be replaced without losing a byte.

    ``reopen`` (the client side) makes a new link to the same server and runs the resume
    handshake: called with how many bytes this side received, it returns the new raw
    transport, how many bytes the peer received, and any bytes of the peer's stream the
    handshake read past its last frame. The server side has no ``reopen``: it waits for
    :meth:`attach` from a resume the server accepted.
    """

    def __init__(self, raw: Transport, *, session_id: bytes, unreachable_after: float,
                 resume_window: float, reopen: Reopen | None = None, received: int = 0,
                 secret: bytes | None = None, store_limit: int = RESEND_LIMIT) -> None:
        self._raw = raw
        # The server side: the link of the latest resume (take_over), the only one that
        # may attach; an earlier resume still under way is dropped by a later one.
        self._claim: Transport | None = None
        self.budget: Any = None  # the server's bound on detached sessions (net/detached.py)
        self.peer_name = raw.peer_name
        self.session_id = session_id
        self.secret = secret  # the session's resume secret (net/auth.py), None without a token
        self.unreachable_after = unreachable_after
        self.resume_window = resume_window
        # A server whose clients reach it through a bridge (an ssh channel) keeps the
        # session when the bridge closes in order: see _lost.
        self.bridged = False
        self.quiet = False  # the link was given up by this side on purpose: no announcement
        self._reopen = reopen
        self.received = received  # bytes of the peer's stream received here
        self.ack_at = received + ACK_EVERY  # received past this: the Connection acknowledges
        self.store = ResendStore(store_limit)
        self._keep = self.store.add
        # What send() and recv_into() call: the link's own methods while open (the hot
        # path is one call more than a bare link), others while it is down (_hold,
        # _wait_for_link) or while a resume's leftover bytes are read first (_recv_prefix).
        self._link_send: Callable[..., None] = raw.send
        self._link_recv: Callable[[memoryview, float | None], int] = raw.recv_into
        self._reading = False  # a reader is between a link's recv_into and counting it
        self._prefix = b""  # peer bytes a resume handshake read past its last frame
        self._state = "open"
        self._since = time.monotonic()  # when the state last changed
        self._failure = ""
        self._cond = threading.Condition()
        # Sends are serialised by the caller: the Connection shares its send lock here
        # (Connection.__init__), so that the re-send after a resume never interleaves.
        self.send_lock: threading.Lock = threading.Lock()
        self._attach_lock = threading.Lock()
        self.on_state: list[Callable[[str], None]] = []  # called with each new state
        self._untold: list[str] = []
        _monitor.track(self)

    # -- what the Connection sees -----------------------------------------------------------

    @property
    def link(self) -> Transport:
        """The current link (it changes with each resume)."""
        return self._raw

    @property
    def send_timeout(self) -> float:  # type: ignore[override]
        return self._raw.send_timeout

    @send_timeout.setter
    def send_timeout(self, value: float) -> None:
        self._raw.send_timeout = value

    @property
    def state(self) -> str:
        """"open", "unreachable", "resuming" or "closed"."""
        if self._state == "open" and self._reopen is not None:
            self._check_link()
        return self._state

    @property
    def state_since(self) -> float:
        """time.monotonic() of the last change of state."""
        return self._since

    @property
    def failure(self) -> str:
        return self._failure

    def ack_sent(self, received: int) -> None:
        """The Connection told the peer it received ``received`` bytes."""
        self.ack_at = received + ACK_EVERY

    def acknowledged(self, offset: int) -> None:
        """The peer received ``offset`` bytes of this side's stream (its ACK)."""
        self.store.note_ack(offset)

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        self._keep(data)
        send = self._link_send
        try:
            send(data, timeout)
        except ConnectionClosed as exc:
            self._lost(getattr(send, "__self__", None), exc)
        except KeyboardInterrupt:
            # A Stop in the middle of a frame: part of it may be on the link. It is kept,
            # so a resume sends the peer exactly what it lacks.
            self.stop_landed("sending")
            raise

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        self._reading = True  # (see _settle)
        try:
            got = self._link_recv(buffer, timeout)
        except ConnectionClosed as exc:
            self._reading = False
            return self._recv_after(exc, buffer, timeout)
        except StopMidRead:
            # Bytes the link took may be lost here: uncounted, so the resume has the peer
            # send them again.
            self._reading = False
            self.stop_landed("reading")
            raise
        self.received += got
        self._reading = False
        return got

    def keep_if_missing(self, frame: bytes | None) -> None:
        """A frame counted by its tag but perhaps never handed to send() (a Stop landed
        between): kept now, so the resume sends it."""
        if frame is not None and not (self.store.kept and self.store.last is frame):
            self._keep(frame)

    def stop_landed(self, doing: str) -> None:
        """A Stop landed in the middle of the stream's bookkeeping: the link is given up
        and the session resumes on a new one, which puts both sides' streams right."""
        self._lost(self._raw, ConnectionClosed(f"a Stop landed while {doing}"), quietly=True)

    def _recv_after(self, exc: ConnectionClosed, buffer: memoryview,
                    timeout: float | None) -> int:
        if self._state == "closed":
            raise self._closed_error() from None
        self._lost(getattr(self._link_recv, "__self__", None), exc)
        return self.recv_into(buffer, timeout)

    def _hold(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """send() while the link is down: kept for the re-send after the resume."""
        if self._state == "closed":
            raise self._closed_error()

    def _wait_for_link(self, buffer: memoryview, timeout: float | None) -> int:
        """recv_into() while the link is down: wait for the resume (0 after ``timeout``)."""
        self._reading = False
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._state == "open":
                    # Marked reading before the lock goes, with the link it reads: a resume
                    # that replaces this link waits for the read to be counted (_settle).
                    self._reading = True  # counted by the recv_into that called this, once
                    recv = self._link_recv
                    break
                if self._state == "closed":
                    raise self._closed_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return 0
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
            self._expire_if_due()
        return recv(buffer, timeout)

    def _recv_prefix(self, buffer: memoryview, timeout: float | None) -> int:
        """recv_into() of what a resume handshake read past its last frame, first."""
        got = min(len(self._prefix), len(buffer))
        buffer[:got] = self._prefix[:got]
        self._prefix = self._prefix[got:]
        if not self._prefix:
            self._link_recv = self._raw.recv_into
        return got

    def has_buffered_data(self) -> bool:
        return bool(self._prefix) or (self._state == "open" and self._raw.has_buffered_data())

    def _settle(self) -> int | None:
        """How many bytes of the peer's stream arrived, once no reader is between a dead
        link's recv_into and counting what it got (the link is dropped: that is brief).
        None if the reader did not leave it within SETTLE_TIMEOUT."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self._reading:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)
        return self.received

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        self._end("closed")

    # -- losing and resuming the link --------------------------------------------------------

    def link_lost(self, reason: str) -> None:
        """Declare the current link dead (the monitor, a test, or a resume that replaces
        it); the session stays, unreachable."""
        self._lost(self._raw, ConnectionClosed(reason))

    def _lost(self, raw: Transport, exc: ConnectionClosed, quietly: bool = False) -> None:
        # An end of stream from a client means its process ended or it closed the
        # connection: a client that gives up a link to resume resets it instead (_drop).
        # So its server lets the session go at once, as without sessions, unless its
        # clients always come through a bridge that closes in their place (``bridged``).
        ends = self._reopen is None and getattr(exc, "orderly", False) and not self.bridged
        with self._cond:
            if raw is not self._raw or self._state != "open":
                return  # (a link given up already, seen ending by its reader)
            if not ends:
                # quietly: this side gave a working link up (a Stop): the waiting cell is
                # not told that the peer went away (see Reading._announce_state).
                self.quiet = quietly
                self._set_state("unreachable")
                self._link_send, self._link_recv = self._hold, self._wait_for_link
        self._tell()
        if ends:
            self._end(f"{self.peer_name} closed the connection")
            return
        log.info("link to %s lost (%s); session kept for %g s", self.peer_name, exc,
                 self.resume_window)
        _drop(raw)
        if self._reopen is not None:
            threading.Thread(target=self._reconnect, name="rk-reconnect", daemon=True).start()

    def _reconnect(self) -> None:
        delay = RECONNECT_FIRST
        while self._state == "unreachable":
            if self._expire_if_due():
                return
            received = self._settle()
            if received is None:
                continue  # (the reader is still on the dropped link: look again)
            try:
                raw, peer_received, leftover = self._reopen(received)  # type: ignore[misc]
            except SessionRefused as exc:
                self._end(str(exc))
                return
            except (OSError, ConnectionClosed, AuthenticationError, ProtocolError) as exc:
                if _server_gone(exc):
                    self._end(f"{self.peer_name} is not running any more: the session and "
                              "its objects are gone")
                    return
                log.debug("reconnect to %s failed: %s", self.peer_name, exc)
                left = self._since + self.resume_window - time.monotonic()
                time.sleep(max(0.0, min(delay, left)))
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self.attach(raw, peer_received, leftover)
            return

    def take_over(self, link: Transport | None = None) -> int:
        """A resume arrived on a new ``link`` (server side): the link in use, even if it
        looks alive, is done, and so is the link of any resume still under way (the latest
        resume wins: only ``link`` may attach). Returns how many bytes of the peer's stream
        this side received. Raises SessionRefused if the session ended, and
        AuthenticationError if the reader does not leave the old link in time."""
        with self._cond:
            if self._state == "closed":
                raise SessionRefused(self._closed_error().args[0])
            earlier = self._claim if self._claim is not self._raw else None
            self._claim = link
        if earlier is not None:
            # Wakes that resume's handshake or re-send; its attach() then gives up.
            _drop(earlier)
        self.link_lost("replaced by a resumed link")  # (nothing if no link is in use)
        received = self._settle()
        if received is None:
            raise AuthenticationError("the session is busy with its old link; try again")
        return received

    def attach(self, raw: Transport, peer_received: int, leftover: bytes = b"") -> bool:
        """Continue the session on ``raw``: re-send what the peer did not receive. False
        when that is no longer possible (and the session closed), or when a later resume
        replaced this one (``raw`` is dropped, the session waits for that resume)."""
        with self._attach_lock:  # one at a time: a later one finds the state settled
            return self._attach(raw, peer_received, leftover)

    def _attach(self, raw: Transport, peer_received: int, leftover: bytes) -> bool:
        with self._cond:
            ended, replaced = self._state == "closed", self._superseded(raw)
            if not (ended or replaced):
                self._set_state("resuming")
        if ended or replaced:
            raw.close() if ended else _drop(raw)
            return False
        self._tell()
        error: ConnectionClosed | None = None
        with self.send_lock:  # (the listeners are told outside it: they may send)
            missing = self.store.since(peer_received)
            try:
                for part in missing or ():
                    raw.send(part)
            except ConnectionClosed as exc:
                error = exc
            with self._cond:
                old = self._raw
                if missing is not None and error is None and self._state != "closed" \
                        and not self._superseded(raw):
                    self._raw = raw
                    self._prefix = leftover
                    self._link_send = raw.send
                    self._link_recv = self._recv_prefix if leftover else raw.recv_into
                    self._set_state("open")
                elif error is None:
                    error = ConnectionClosed("the session ended, or a later resume "
                                             "replaced this one")
        if missing is None:
            raw.close()
            self._end(f"cannot resume the session with {self.peer_name}: more was sent "
                      "than is kept for re-sending; its objects are released there")
            return False
        if error is not None:
            self._attach_failed(raw, error)
            return False
        self._tell()
        if old is not raw:
            _drop(old)  # (dropped already when that link was lost; then a no-op)
        log.info("session with %s resumed (%d bytes re-sent)", self.peer_name,
                 sum(len(part) for part in missing))
        return True

    def _superseded(self, raw: Transport) -> bool:
        """Call with ``_cond`` held: a later resume claimed the session (server side)."""
        return self._claim is not None and raw is not self._claim

    def _attach_failed(self, raw: Transport, exc: ConnectionClosed) -> None:
        _drop(raw)
        with self._cond:
            if self._state == "resuming":
                self._set_state("unreachable")
        self._tell()
        log.info("resume of %s failed while re-sending: %s", self.peer_name, exc)
        if self._reopen is not None and self._state == "unreachable":
            threading.Thread(target=self._reconnect, name="rk-reconnect",
                             daemon=True).start()

    # -- ends ---------------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the session: the link is closed and a later resume is refused."""
        self._end(reason)

    def _expire_if_due(self) -> bool:
        if self._state == "unreachable" and \
                time.monotonic() - self._since > self.resume_window:
            self._end(f"{self.peer_name} unreachable for {self.resume_window:g} s: session "
                      "closed, its objects released there")
            return True
        return self._state == "closed"

    def _end(self, reason: str) -> None:
        with self._cond:
            if self._state == "closed":
                return
            self._failure = reason
            self._set_state("closed")
            self._link_send, self._link_recv = self._hold, self._wait_for_link
            self._keep = _ignore  # an ended session re-sends nothing: nothing is kept
        self.store.clear()
        self._tell()
        _monitor.forget(self)
        try:
            self._raw.close()
        except Exception:
            log.exception("closing the link failed")

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(self._failure or f"connection to {self.peer_name} is closed")

    def _set_state(self, state: str) -> None:
        """Call with ``_cond`` held; :meth:`_tell` the listeners after letting it go."""
        if state == self._state:
            return
        self._state = state
        self._since = time.monotonic()
        self._untold.append(state)
        self._cond.notify_all()

    def _tell(self) -> None:
        """Call the state listeners, outside every lock (they may use the connection)."""
        while self._untold:
            try:
                state = self._untold.pop(0)
            except IndexError:
                return
            for callback in list(self.on_state):
                try:
                    callback(state)
                except Exception:
                    log.exception("session state callback failed")

    def _check_link(self) -> None:
        """Notice a link the OS declared dead (keepalive, user timeout) even when nobody
        reads: its socket reports an error or a hang-up."""
        try:
            fd = self._raw.fileno()
        except (OSError, ValueError):
            return
        if fd < 0:
            return
        poller = select.poll()
        poller.register(fd, select.POLLERR | select.POLLHUP)
        try:
            events = poller.poll(0)
        except OSError:
            return
        if events and events[0][1] & (select.POLLERR | select.POLLHUP):
            self.link_lost("the link stopped answering")


def _ignore(data: bytes | bytearray | memoryview) -> None:
    """What an ended session keeps of a send: nothing."""


def _drop(raw: Transport) -> None:
    """Give up a link: reset it where the transport can (so the peer does not take it for
    this side's end, see _lost), else close it."""
    try:
        abort = getattr(raw, "abort", None)
        (abort or raw.close)()
    except Exception:
        log.exception("closing a dead link failed")


def _server_gone(exc: BaseException) -> bool:
    """True when a reconnect failed because nothing listens there any more (the server's
    process ended; its unix socket or connection file is gone), not because of the link."""
    for error in (exc, exc.__cause__):
        if isinstance(error, (ConnectionRefusedError, FileNotFoundError)):
            return True
        if isinstance(error, OSError) and error.errno == errno.ECONNREFUSED:
            return True
    return False


class _Monitor:
    """One daemon thread that notices dead links of sessions nobody is reading."""

    def __init__(self) -> None:
        self._sessions: set[ResumableTransport] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def track(self, session: ResumableTransport) -> None:
        with self._lock:
            self._sessions.add(session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rk-session-monitor",
                                                daemon=True)
                self._thread.start()

    def forget(self, session: ResumableTransport) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _run(self) -> None:
        while True:
            time.sleep(MONITOR_SLICE)
            with self._lock:
                sessions = list(self._sessions)
            for session in sessions:
                try:
                    if session._state == "open":
                        session._check_link()
                    elif not session._expire_if_due() and session.budget is not None:
                        session.budget.enforce()  # (what a detached session keeps grows)
                except Exception:
                    log.exception("session monitor")


_monitor = _Monitor()


def configure_liveness(sock: Any, unreachable_after: float) -> None:
    """Let the OS notice a silent TCP peer within ``unreachable_after`` seconds: keepalive
    probes while idle, and a limit on how long sent data may stay unacknowledged (a link
    busy with a slow transfer keeps getting acknowledgements, so it stays alive)."""
    import socket

    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(unreachable_after * 0.4))
    interval = max(1, int(unreachable_after * 0.2))
    count = max(1, int((unreachable_after - idle) / interval))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval),
                        ("TCP_KEEPCNT", count),
                        ("TCP_USER_TIMEOUT", int(unreachable_after * 1000))):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            log.debug("socket option %s not available here", option)


__all__ = ["ResendStore", "ResumableTransport", "SessionRefused", "configure_liveness"]

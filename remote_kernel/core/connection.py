"""Connection: runs the protocol over a transport.

Theory of operation
-------------------
There is no dedicated reader thread. Whichever thread needs a message takes the *reader
role* (``_recv_lock``), reads and decodes one frame, gives the role back and dispatches:
a reply is handed to the thread or :class:`AsyncResult` that waits for it, a request is
served right there. So a thread waiting for its reply serves the peer's callbacks meanwhile
(callbacks nest to any depth), several threads can wait at once, and the fast path of a call
is one send and one read on the calling thread.

A request that takes long blocks the thread that read it; a watchdog then lends the
connection another reader, so a CANCEL for the long request is still read and acted upon
(the request's thread gets ``KeyboardInterrupt``, see ``_interrupt``).

Releases of dropped proxies are queued by ``__del__`` (never sent from inside the garbage
collector) and go out as one batch in front of the next message.

Sending is all or nothing. A message that cannot be encoded or is too large is not sent and
leaves no trace: the releases it would have carried stay queued, and what boxing it changed
(types marked as described, objects entered in the table) is undone. Once bytes have gone
out, a send that fails (the peer vanished, or read nothing for the transport's send timeout)
cuts the stream mid-frame, so the connection is dropped. ``close()`` waits for a sender at
most ``CLOSE_GRACE`` seconds, then closes the transport under it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack

from remote_kernel.config import ProtocolConfig, make_config
from remote_kernel.core import interrupt as _interrupt
from remote_kernel.core.asyncresult import AsyncResult
from remote_kernel.core.netref import BaseNetref, new_proxy
from remote_kernel.core.serving import BgServingThread, _watchdog
from remote_kernel.core.transport import FrameReader, Transport
from remote_kernel.errors import ConnectionClosed, ProtocolError, RequestTimeout, mark_stop
from remote_kernel.protocol.boxing import (
    INT_MAX,
    INT_MIN,
    MAX_VALUE_ITEMS,
    PASSTHROUGH,
    Boxer,
    Kwargs,
    ObjectTable,
    buffers_announced,
    buffers_header,
    buffers_reply_to,
)
from remote_kernel.protocol.codec import CHUNK, HEADER, MAX_FRAME, frame, pack
from remote_kernel.protocol.describe import Descriptor, describe_type
from remote_kernel.protocol.handlers import HANDLERS, RequestContext
from remote_kernel.protocol.landing import Landing
from remote_kernel.protocol.messages import (
    BUFFERS,
    CALLATTR,
    CLOSE,
    EXCEPTION,
    NOTIFY,
    REPLY,
    REQUEST,
    Kind,
    Op,
)
from remote_kernel.protocol.policy import AttributePolicy

log = logging.getLogger("remote_kernel.core.connection")

_DEFAULT = object()
READ_SLICE = 1.0  # seconds a reader blocks before re-checking its deadline
CANCEL_GRACE = 1.0  # how long an interrupted wait gives the peer to answer the cancel
MAX_BUFFERS = 1024  # out-of-band buffers in one message
DELIVERY_SLICE = 0.005  # a reader's wait while another thread hands over a reply
CLOSE_GRACE = 0.5  # close(): how long to wait for a sender before cutting it off
POLL_BATCH = 64  # poll_all(): messages served per call once its timeout has passed
_CLOSE_MESSAGE = pack([Kind.NOTIFY, Op.CLOSE])


# Called with each new Connection (the IPython extension serves them from the kernel loop).
new_connection_hooks: list[Callable[[Connection], None]] = []


class OutputRouting:
    """Where the output of a request goes: the IPython extension (inside ipykernel) sets
    ``output_routing`` to one of these, so that a callback prints into the notebook cell
    that sent it across, as ipykernel routes a thread's output to the cell that started it.
    ``capture()`` is called when a local object is first sent to a peer (in the sending
    thread); ``enter(origin)`` around serving a request addressed to that object returns a
    token for ``leave``."""

    def capture(self) -> Any:
        return None

    def enter(self, origin: Any) -> Any:
        return None

    def leave(self, token: Any) -> None:
        pass


output_routing: OutputRouting | None = None


def _capture_origin() -> Any:
    routing = output_routing
    if routing is None:
        return None
    try:
        return routing.capture()
    except Exception:
        log.exception("capturing the output route failed")
        return None


class Connection:
    """One end of a remote_kernel connection. Symmetric: both ends serve requests."""

    def __init__(self, transport: Transport, service: Any = None, config: Any = None,
                 name: str | None = None, reader: FrameReader | None = None) -> None:
        from remote_kernel.core.service import VoidService, make_service

        self._service = make_service(service if service is not None else VoidService)
        self._config = _effective_config(self._service, config)
        self._transport = transport
        self.peer: str = name or self._config.connid or transport.peer_name
        # The handshake's reader may already hold the first bytes of the protocol proper;
        # it read through a small buffer, the connection reads through a large one.
        # A resumable session (net/session.py) under this connection, acknowledged here.
        self._session = transport if hasattr(transport, "acknowledged") else None
        self._announced_state = "open"
        # Called with each new state ("unreachable", "resuming", "open", "closed").
        self.on_state: list[Callable[[str], None]] = []
        if self._session is not None:
            self._session.on_state.append(self._state_changed)
        self._reader = reader or FrameReader(transport, self._config.max_message_size)
        self._reader.max_message_size = self._config.max_message_size
        if reader is not None:
            reader.resize(CHUNK)
        # Wire revision 2: with a token, every frame sent carries a tag (protocol/codec.py).
        self._send_auth = self._reader.send_auth
        self.session = self._reader.session  # what the handshake agreed (net/auth.py)
        self._policy = AttributePolicy(self._config)
        self._table = ObjectTable(origin=_capture_origin)
        self._descriptors: dict[type, Descriptor] = {}
        self._netref_classes: dict[Descriptor, type] = {}  # keyed by the peer's data
        self._boxer = Boxer(
            self._table,
            describe=self._describe,
            make_proxy=self._make_proxy,
            proxy_oid=self._proxy_oid,
            peer_name=lambda: self.peer,
            include_traceback=self._config.include_local_traceback,
        )
        self._ctx = RequestContext(self._service, self._policy)
        self._seq = itertools.count(1)
        self._send_lock = threading.Lock()
        if self._session is not None:
            self._session.send_lock = self._send_lock  # one lock for sends and re-sends
        self._sender: int | None = None  # the thread encoding a message, under the lock
        self._packer = msgpack.Packer(use_bin_type=True)  # used under the send lock
        self._recv_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0
        self._replies: dict[int, tuple[bool, Any]] = {}
        self._buffers_expected = 0
        self._buffers_bytes = 0
        self._landings: dict[int, Landing] = {}  # seq -> memory offered for its reply
        self._landing_seq: int | None = None  # the reply whose buffer is landing now
        self._delivering: set[int] = set()  # threads holding a reply not yet handed over
        self._pending: set[int] = set()
        self._interrupted: set[int] = set()  # requests this side cancelled (interrupt())
        self._async: dict[int, AsyncResult] = {}
        self._proxies: dict[int, weakref.ref] = {}
        self._releases: collections.deque[tuple[int, int]] = collections.deque()
        self._running: dict[int, tuple[int, _interrupt.CancelToken]] = {}
        self._running_lock = threading.Lock()
        self._busy_since: float | None = None
        self._lent_reader = False  # the watchdog lent this connection a reader thread
        self._closed = False
        self._close_reason = ""
        self._root: Any = None
        self._disconnected = False
        # Counted as plain ints (a Counter update is a Python-level call per message).
        self._requests = self._releases_sent = 0
        self._messages_in = self._messages_out = self._bytes_in = self._bytes_out = 0
        self.on_close: list[Callable[[Connection], None]] = []
        # Whether the peer's display output reaches a notebook unfiltered (``connect(...,
        # trust_output=True)``, ``%remote connect --trust``); see core/outputs.py.
        self.trust_output = False
        _watchdog.track(self)
        self._service.on_connect(self)
        for hook in list(new_connection_hooks):
            try:
                hook(self)
            except Exception:
                log.exception("new-connection hook %r failed", hook)

    # -- public API --------------------------------------------------------------------

    @property
    def root(self) -> Any:
        """The peer's service object (a netref); fetched once."""
        if self._root is None:
            self._root = self.sync_request(Op.GETROOT)
        return self._root

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> str:
        """"open", "unreachable" (the peer stopped answering; its session is kept and
        resumed when the link returns), "resuming" or "closed"."""
        if self._closed:
            return "closed"
        session = self._session
        return "open" if session is None else session.state

    @property
    def state_since(self) -> float | None:
        """time.monotonic() when the state last changed (None: not tracked here)."""
        session = self._session
        return None if session is None else session.state_since

    @property
    def close_reason(self) -> str:
        """Why the connection closed ("" while open)."""
        return self._close_reason

    @property
    def reader_busy(self) -> bool:
        """True while some thread holds the reader role (it dispatches what arrives)."""
        return self._recv_lock.locked()

    @property
    def config(self) -> ProtocolConfig:
        return self._config

    @property
    def stats(self) -> dict[str, int]:
        """Requests sent, messages and bytes each way, releases sent (a snapshot)."""
        return {"requests": self._requests, "messages_in": self._messages_in,
                "messages_out": self._messages_out, "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out, "releases": self._releases_sent}

    @property
    def modules(self) -> Any:
        return self.root.modules

    @property
    def namespace(self) -> Any:
        return self.root.namespace

    @property
    def builtins(self) -> Any:
        return self.root.builtins

    builtin = builtins  # RPyC's classic connections have both names

    def eval(self, source: str) -> Any:
        return self.root.eval(source)

    def execute(self, source: str) -> Any:
        return self.root.execute(source)

    def ping(self, timeout: float = 3.0) -> float:
        """Round-trip time in seconds."""
        payload = b"ping"
        start = time.perf_counter()
        if self.sync_request(Op.PING, payload, timeout=timeout) != payload:
            raise ProtocolError(f"{self.peer} answered a ping with a different payload")
        return time.perf_counter() - start

    def fileno(self) -> int:
        return self._transport.fileno()

    @property
    def local_object_count(self) -> int:
        """How many of our objects the peer holds references to."""
        return len(self._table)

    @property
    def proxy_count(self) -> int:
        return sum(1 for ref in list(self._proxies.values()) if ref() is not None)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<remote_kernel.Connection to {self.peer} ({self.state})>"

    # -- requests ------------------------------------------------------------------------

    def sync_request(self, op: int, *args: Any, timeout: Any = _DEFAULT,
                     into: Landing | None = None) -> Any:
        """Send a request and wait for its reply, serving the peer meanwhile. ``into``:
        memory offered for the reply's one large bytes buffer; when that buffer has exactly
        its size it is received there, and the reply holds ``into.view`` in its place. The
        offer is withdrawn when this call ends, however it ends (see landing.py)."""
        if timeout is _DEFAULT:
            timeout = self._config.sync_request_timeout
        seq = next(self._seq)
        self._pending.add(seq)
        if into is not None:
            self._landings[seq] = into
        try:
            self._send_message(REQUEST, seq, op, args)
            ok, value = self._wait_reply(seq, op, timeout)
        finally:
            self._pending.discard(seq)
            if into is not None:
                self._landings.pop(seq, None)
                into.withdraw()  # a frame still landing there drains elsewhere
        if self._interrupted:
            value = self._as_local_stop(seq, value) if not ok else value
            self._interrupted.discard(seq)
        if ok:
            return value
        raise value

    def _as_local_stop(self, seq: int, error: BaseException) -> BaseException:
        """The KeyboardInterrupt a peer sends back for a request WE cancelled is our own
        Stop: a real KeyboardInterrupt here. Any other one stays a RemoteError, so a peer
        cannot interrupt us uninvited."""
        if seq not in self._interrupted:
            return error
        self._interrupted.discard(seq)
        if getattr(error, "remote_type", "") == "builtins.KeyboardInterrupt":
            return mark_stop(KeyboardInterrupt(), self.peer)
        return error

    def callattr(self, obj: Any, name: str, args: tuple, kwargs: dict | None) -> Any:
        return self.sync_request(CALLATTR, obj, name, args, Kwargs(kwargs) if kwargs else None)

    def async_request(self, op: int, *args: Any, into: Landing | None = None) -> AsyncResult:
        """Send a request; its reply comes as an :class:`AsyncResult`. ``into``: memory
        offered for the reply's one large bytes buffer, as for :meth:`sync_request`; the
        caller withdraws it (and calls :meth:`forget`) when it stops waiting."""
        seq = next(self._seq)
        result = AsyncResult(self, seq)
        self._async[seq] = result
        if into is not None:
            self._landings[seq] = into
        try:
            self._send_message(REQUEST, seq, op, args)
        except BaseException:
            self._async.pop(seq, None)
            if into is not None:
                self._landings.pop(seq, None)
                into.withdraw()
            raise
        return result

    def forget(self, result: AsyncResult) -> None:
        """No one waits for ``result`` any more: its reply is dropped when it comes, and
        memory offered for it is no longer handed to a frame that has not started (one
        that has keeps its offer until the caller withdraws it, see landing.py)."""
        self._async.pop(result._seq, None)
        self._landings.pop(result._seq, None)

    def _wait_reply(self, seq: int, op: int, timeout: float | None) -> tuple[bool, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = self._replies
        try:
            # Fast path: no other thread waits, so this one takes the reader role, and the
            # next message is most likely its reply (then no hand-over at all).
            if not self._waiters and self._recv_lock.acquire(False):
                try:
                    wait = READ_SLICE if timeout is None else min(timeout, READ_SLICE)
                    if self._delivering:
                        wait = min(wait, DELIVERY_SLICE)
                    message = self._read_message(wait)
                    if message is not None:
                        kind = message[0]
                        if kind == REPLY or kind == EXCEPTION:
                            if message[1] == seq and len(message) == 3:
                                return kind == REPLY, message[2]
                            self._delivering.add(threading.get_ident())  # see _read_as_reader
                finally:
                    self._recv_lock.release()
                    if self._waiters:
                        self._wake_waiters()
                if message is not None:
                    self._dispatch(message)
            self._drive_until(lambda: seq in replies, deadline)
        except RequestTimeout:
            self._replies.pop(seq, None)
            raise RequestTimeout(f"no reply from {self.peer} within {timeout} s") from None
        except KeyboardInterrupt as exc:  # the user's Ctrl-C / Stop: cancel it over there
            self._cancel(seq)
            mark_stop(exc, self.peer)  # one short line in IPython, no frames of the wait
            raise
        return replies.pop(seq)

    def _cancel(self, seq: int) -> None:
        """Ask the peer to interrupt request ``seq``; give it a moment to answer."""
        if self._closed:
            return
        try:
            self._send_message(Kind.NOTIFY, None, Op.CANCEL, (seq,))
            # Answered: a sync request's reply is in _replies, an async one's was handed
            # to its AsyncResult (or nobody waits for it any more).
            self._drive_until(lambda: seq in self._replies or (
                seq not in self._pending and seq not in self._async),
                time.monotonic() + CANCEL_GRACE)
        except (RequestTimeout, ConnectionClosed, KeyboardInterrupt, ProtocolError):
            pass
        finally:
            self._replies.pop(seq, None)

    def interrupt(self) -> int:
        """Ask the peer to cancel every request this side is waiting for, from any thread:
        what Ctrl-C does for the waiting thread, for all of them at once. Each waiting call
        then raises ``KeyboardInterrupt`` (sent back by the peer) and the connection stays
        usable. Returns how many requests were cancelled; never waits."""
        if self._closed:
            return 0
        seqs = [*self._pending, *self._async]  # copied under the GIL, in one C call each
        self._interrupted.update(seqs)
        for seq in seqs:
            try:
                self._send_message(Kind.NOTIFY, None, Op.CANCEL, (seq,))
            except (ConnectionClosed, ProtocolError):
                return 0
        return len(seqs)

    # -- the reader role -------------------------------------------------------------------

    def _drive_until(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Read and dispatch messages (or wait for the thread that does) until ``done()``."""
        try:
            self._drive(done, deadline)
        finally:
            if self._announced_state != "open" and self.state == "open":
                self._announce_state()  # the wait ended with the session resumed

    def _drive(self, done: Callable[[], bool], deadline: float | None) -> None:
        while not done():
            if self._closed:
                raise self._closed_error()
            if self._session is not None and self._session.state != self._announced_state:
                self._announce_state()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise RequestTimeout("timed out")
            if self._recv_lock.acquire(blocking=False):
                try:
                    if done():
                        return
                    wait = READ_SLICE if remaining is None else min(remaining, READ_SLICE)
                    message = self._read_as_reader(wait)
                finally:
                    self._recv_lock.release()
                    self._wake_waiters()
                if message is not None:
                    self._dispatch(message)
            else:
                with self._cond:
                    if done() or self._closed:
                        continue
                    self._waiters += 1
                    try:
                        wait = 0.5 if remaining is None else min(remaining, 0.5)
                        self._cond.wait(wait)
                    finally:
                        self._waiters -= 1

    def _state_changed(self, state: str) -> None:
        for callback in list(self.on_state):
            try:
                callback(state)
            except Exception:
                log.exception("state callback failed")

    def _announce_state(self) -> None:
        """One line for the user waiting on this connection when its link fails, and one
        when the session resumes (on stderr: a notebook shows it in the running cell)."""
        state = self._session.state
        previous, self._announced_state = self._announced_state, state
        if state == "unreachable":
            window = self._session.resume_window
            print(f"{self.peer} unreachable: waiting for the link to return (the session is "
                  f"kept for {window:g} s; Stop to give up)", file=sys.stderr, flush=True)
        elif state == "open" and previous != "open":
            print(f"{self.peer} reachable again: session resumed", file=sys.stderr, flush=True)

    def _wake_waiters(self) -> None:
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    def _read_as_reader(self, wait: float | None) -> tuple | None:
        """Read one message holding the reader role. A reply read here is marked as being
        delivered until ``_dispatch`` hands it over: meanwhile other readers block only
        briefly, as the reply they wait for may be the one in flight."""
        if self._delivering:
            wait = DELIVERY_SLICE if wait is None else min(wait, DELIVERY_SLICE)
        message = self._read_message(wait)
        if message is not None and (message[0] == REPLY or message[0] == EXCEPTION):
            self._delivering.add(threading.get_ident())
        return message

    def _read_message(self, timeout: float | None) -> tuple | None:
        """Read and decode one message; call with the reader role held."""
        boxer = self._boxer
        try:
            payload = self._reader.read_frame(timeout)
            if payload is None:
                return None
            self._bytes_in += len(payload) + 4
            if not self._buffers_expected and not boxer.incoming:
                message = boxer.decode(payload)
                if type(message) is not tuple or len(message) < 2:
                    raise ProtocolError("a message must be an array")
                if message[0] != BUFFERS:
                    self._messages_in += 1
                    session = self._session
                    if session is not None and session.received >= session.ack_at:
                        self._send_ack()
                    return message
                payload = None
                self._expect_buffers(message)
            return self._read_with_buffers(payload, timeout)
        except ConnectionClosed as exc:
            self._lost(str(exc))
            raise self._closed_error() from None
        except ProtocolError as exc:
            log.warning("closing connection to %s: %s", self.peer, exc)
            self._lost(f"protocol error: {exc}")
            raise ProtocolError(f"{exc} (from {self.peer})") from None

    def _expect_buffers(self, message: tuple) -> None:
        count, kinds = buffers_announced(message, MAX_BUFFERS)
        seq = buffers_reply_to(message)
        # The one bytes buffer of a reply whose caller offered memory for it lands there;
        # other bytes buffers are received straight into bytes.
        landing = self._landings.pop(seq, None) if seq is not None and kinds == b"\1" \
            else None
        self._reader.expect(kinds if landing is None else (landing,))
        self._landing_seq = seq if landing is not None else None
        self._buffers_expected = count

    def _read_with_buffers(self, payload: bytes | bytearray | None,
                           timeout: float | None) -> tuple | None:
        """A message with out-of-band buffers: the buffers announced by a BUFFERS frame
        are collected first, then the message that uses them is decoded. The state
        survives a timeout between frames; ``timeout`` counts for all of them. ``payload``
        is a frame already read (None: read the next)."""
        boxer = self._boxer
        deadline = None if not timeout else time.monotonic() + timeout
        while True:
            if payload is None:
                payload = self._reader.read_frame(timeout)
                if payload is None:
                    return None
                self._bytes_in += len(payload) + 4
                if deadline is not None:
                    timeout = max(0.0, deadline - time.monotonic())
            if self._buffers_expected:
                self._buffers_bytes += len(payload)
                if self._buffers_bytes > self._config.max_message_size:
                    raise ProtocolError("a message with its buffers exceeds max_message_size")
                boxer.incoming.append(payload)
                self._buffers_expected -= 1
                payload = None
                continue
            try:
                message = boxer.decode(payload)
            finally:
                if boxer.incoming:
                    boxer.incoming = []
            payload = None
            if type(message) is not tuple or len(message) < 2:
                raise ProtocolError("a message must be an array")
            if message[0] != BUFFERS:
                self._buffers_bytes = 0
                self._messages_in += 1
                session = self._session
                if session is not None and session.received >= session.ack_at:
                    self._send_ack()
                if self._landing_seq is not None:
                    landed_for, self._landing_seq = self._landing_seq, None
                    if message[0] != REPLY or message[1] != landed_for:
                        raise ProtocolError(f"buffers announced for reply {landed_for} "
                                            "came with another message")
                return message
            self._expect_buffers(message)

    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if type(kind) is not int or type(message[1]) is not int:
            self._delivering.discard(threading.get_ident())
            raise self._protocol_violation("message kinds, opcodes and sequence numbers "
                                           "must be integers")
        if kind == REPLY or kind == EXCEPTION:
            try:
                if len(message) != 3:
                    raise self._protocol_violation("malformed reply")
                self._deliver(message[1], (kind == REPLY, message[2]))
            finally:
                self._delivering.discard(threading.get_ident())
        elif kind == REQUEST:
            if len(message) < 3:
                raise self._protocol_violation("malformed request")
            self._serve_request(message[1], message[2], message[3:])
        elif kind == NOTIFY:
            self._notify(message[1], message[2:])
        else:
            raise self._protocol_violation(f"unknown message kind {kind!r}")

    def _protocol_violation(self, what: str) -> ProtocolError:
        self._lost(f"protocol error: {what}")
        return ProtocolError(f"{what} from {self.peer}")

    def _deliver(self, seq: Any, outcome: tuple[bool, Any]) -> None:
        result = self._async.pop(seq, None)
        if result is not None:
            if not outcome[0] and self._interrupted:
                outcome = (False, self._as_local_stop(seq, outcome[1]))
            result.set_outcome(outcome)
            self._wake_waiters()
            return
        if seq in self._pending:
            self._replies[seq] = outcome
            self._wake_waiters()
        # else: a late reply to an abandoned (timed out or interrupted) request

    # -- serving -----------------------------------------------------------------------------

    def _serve_request(self, seq: Any, op: Any, args: tuple) -> None:
        handler = HANDLERS.get(op) if type(op) is int else None
        ident = threading.get_ident()
        token, previous = _interrupt.enter_request(ident)
        # Registering needs no lock (dict stores are atomic); ending does (see _end_request).
        self._running[seq] = (ident, token)
        if self._busy_since is None:
            self._busy_since = time.monotonic()
            if _watchdog._thread is None:
                _watchdog.kick()
        outcome: tuple[bool, Any] | None = None
        route = self._route_output(args) if output_routing is not None else None
        try:
            try:
                if handler is None:
                    raise ProtocolError(f"unknown request opcode {op!r}")
                if op == CLOSE:
                    outcome = (True, None)
                else:
                    outcome = (True, handler(self._ctx, *args))
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the peer
                outcome = (False, exc)
            finally:
                if route is not None:
                    self._unroute_output(route)
            self._end_request(seq, token)
        except KeyboardInterrupt as exc:  # a cancel that landed after the handler returned
            self._end_request(seq, token)
            if outcome is None:
                outcome = (False, exc)
        finally:
            _interrupt.leave_request(ident, previous)
        self._reply(seq, outcome)
        if op == CLOSE:
            self.close("closed by the peer")

    def _route_output(self, args: tuple) -> tuple[OutputRouting, Any] | None:
        """Output of a request addressed to a local object goes where that object came
        from (see OutputRouting); (routing, token) to undo it, or None."""
        routing = output_routing
        if routing is None or not args:
            return None
        origin = self._table.origin_of(args[0])
        if origin is None:
            return None
        try:
            return routing, routing.enter(origin)
        except Exception:
            log.exception("routing the output of a request failed")
            return None

    @staticmethod
    def _unroute_output(route: tuple[OutputRouting, Any]) -> None:
        routing, token = route
        try:
            routing.leave(token)
        except Exception:
            log.exception("restoring the output route failed")

    def _end_request(self, seq: Any, token: _interrupt.CancelToken) -> None:
        with self._running_lock:
            self._running.pop(seq, None)
            if not self._running:
                self._busy_since = None
            if token.cancelled:
                _interrupt.raise_in_thread(threading.get_ident(), None)

    def _reply(self, seq: Any, outcome: tuple[bool, Any]) -> None:
        ok, value = outcome
        if self._closed:
            return
        try:
            if ok:
                self._send_message(REPLY, seq, value, None)
            else:
                self._send_message(EXCEPTION, seq, value, None)
        except ConnectionClosed:
            pass
        except Exception as exc:  # the result could not be encoded: say so instead
            try:
                self._send_message(Kind.EXCEPTION, seq, exc, None)
            except ConnectionClosed:
                pass

    def _notify(self, op: Any, args: tuple) -> None:
        if op == Op.DEL:
            items = args[0] if args else ()
            if type(items) is not tuple or not all(
                    type(item) is tuple and len(item) == 2 and type(item[0]) is int
                    and type(item[1]) is int and item[1] > 0 for item in items):
                raise self._protocol_violation("malformed release notification")
            for oid, count in items:
                self._table.decref(oid, count)
        elif op == Op.CANCEL:
            seq = args[0] if args else None
            if type(seq) is not int:
                raise self._protocol_violation("malformed cancel notification")
            with self._running_lock:
                running = self._running.get(seq)
                if running is not None:
                    ident, token = running
                    token.cancel()
                    _interrupt.raise_in_thread(ident, KeyboardInterrupt)
        elif op == Op.ACK:
            count = args[0] if args else None
            if type(count) is not int or self._session is None:
                raise self._protocol_violation("malformed acknowledgement")
            try:
                self._session.acknowledged(count)
            except ProtocolError as exc:
                raise self._protocol_violation(str(exc)) from None
        elif op == Op.CLOSE:
            self._lost("closed by the peer")
        # unknown notifications are ignored: they need no answer

    def _read_one(self, wait: float | None, lock_timeout: float = 0) -> tuple | None:
        """Take the reader role (waiting up to ``lock_timeout``; -1: as long as it takes),
        read one message within ``wait``, give the role back. None: nothing read."""
        lock = self._recv_lock
        if not lock.acquire(timeout=lock_timeout):
            return None
        try:
            return self._read_as_reader(wait)
        finally:
            lock.release()
            if self._waiters:
                self._wake_waiters()

    def _poll_once(self) -> bool:
        """Serve one message that is already there, if this thread can read; never blocks."""
        message = self._read_one(0)
        if message is None:
            return False
        self._dispatch(message)
        return True

    def serve(self, timeout: float | None = 1.0) -> bool:
        """Serve one incoming message; False when none arrived within ``timeout``."""
        if self._closed:
            raise self._closed_error()
        self._flush_releases()
        message = self._read_one(timeout, -1 if timeout is None else timeout)
        if message is None:
            return False
        self._dispatch(message)
        return True

    def serve_all(self) -> None:
        """Serve until the connection closes."""
        lock, read, dispatch = self._recv_lock, self._read_as_reader, self._dispatch
        try:
            while not self._closed:
                if self._releases:
                    self._flush_releases()
                if not lock.acquire(timeout=READ_SLICE):
                    continue
                try:
                    message = read(READ_SLICE)
                finally:
                    lock.release()
                    if self._waiters:
                        self._wake_waiters()
                if message is not None:
                    dispatch(message)
        except ConnectionClosed:
            pass
        finally:
            self.close()

    def poll_all(self, timeout: float = 0) -> bool:
        """Serve every message that arrives within ``timeout``; True if any was served.
        Under a flood it returns once the timeout has passed and ``POLL_BATCH`` messages
        were served, so a caller on an event loop gets its turn back."""
        served = 0
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and served >= POLL_BATCH:
                return True
            if not self.serve(max(0.0, remaining)):
                return served > 0
            served += 1

    def poll(self, timeout: float = 0) -> bool:
        return self.serve(timeout)

    def serve_in_background(self) -> BgServingThread:
        return BgServingThread(self)

    def has_pending_input(self) -> bool:
        return self._reader.buffered()

    # -- the watchdog's hooks (core/serving.py) ---------------------------------------------

    @property
    def busy(self) -> bool:
        """True while this connection serves a request."""
        return self._busy_since is not None

    def claim_lent_reader(self, now: float, threshold: float) -> bool:
        """True (and the claim taken) when every reader of this connection has been busy
        serving requests for over ``threshold`` seconds, so nobody would read a CANCEL."""
        since = self._busy_since
        if (since is None or now - since <= threshold or self._closed
                or self._recv_lock.locked() or self._lent_reader):
            return False
        self._lent_reader = True
        return True

    def serve_while_busy(self) -> None:
        """Serve as a lent reader while long requests run; gives the claim back at the end."""
        try:
            while self._busy_since is not None and not self._closed:
                self.serve(0.1)
        except (ConnectionClosed, ProtocolError):
            pass
        finally:
            self._lent_reader = False

    # -- sending ------------------------------------------------------------------------------

    def _send_message(self, kind: int, seq: Any, op_or_value: Any, args: tuple | None) -> None:
        if self._closed:
            raise self._closed_error()
        boxer = self._boxer
        limit = self._config.max_message_size
        ident = threading.get_ident()
        if self._sender == ident:
            # Encoding a message ran code that asks the peer something (Python 3.12 looks
            # up ``dir(obj)`` of a netref to suggest names in an AttributeError's text):
            # waiting for our own send lock would hang; the caller's fallback applies.
            raise ProtocolError("a request cannot be made while a message is being encoded")
        with self._send_lock:
            self._sender = ident
            releases = self._take_releases() if self._releases else None
            boxer.begin()
            try:
                if kind == REQUEST:
                    body = [kind, seq, op_or_value]
                    box = boxer.box
                    for arg in args:  # names and None need no boxing (most arguments)
                        body.append(arg if type(arg) in PASSTHROUGH else box(arg))
                elif kind == REPLY:
                    value = op_or_value
                    body = [kind, seq, value if type(value) in PASSTHROUGH or (
                        type(value) is int and INT_MIN <= value <= INT_MAX) else boxer.box(value)]
                elif kind == EXCEPTION:
                    body = [kind, seq, boxer.box_exception(op_or_value)]
                else:  # NOTIFY: seq is unused, op_or_value is the opcode
                    body = [kind, op_or_value, *map(boxer.box, args or ())]
                try:
                    payload = self._packer.pack(body)
                except (TypeError, ValueError, OverflowError) as exc:
                    self._packer.reset()
                    raise ProtocolError(f"cannot encode message: {exc}") from exc
                buffers = boxer.outgoing
                if buffers:
                    boxer.outgoing = []
                if boxer.items > MAX_VALUE_ITEMS:
                    raise ProtocolError(
                        f"a message may carry at most {MAX_VALUE_ITEMS} items by value, this "
                        f"one {boxer.items}; not sent (copy large data as a numpy array)")
                size = len(payload)
                if size > limit or size > MAX_FRAME:
                    frame(payload, limit)  # refuses it
                released = pack([Kind.NOTIFY, Op.DEL, releases]) if releases else None
                if released is not None and len(released) > min(limit, MAX_FRAME):
                    frame(released, limit)  # refuses it
                views = self._checked_buffers(buffers, len(payload), limit) if buffers \
                    else None
            except BaseException:
                # Not sent: leave no trace (see the theory of operation).
                self._sender = None
                boxer.rollback()
                if releases:
                    self._releases.extendleft(reversed(releases))
                raise
            self._sender = None
            # Frames are tagged in the order they are sent (each tag counts its frame).
            auth = self._send_auth
            head = None if released is None else self._framed(released)
            try:
                sent = 0
                if views is not None:
                    # The buffers must come right before the message that uses them.
                    if head is not None:
                        self._transport.send(head)
                        sent, head = len(head), None
                    sent += self._send_buffers(views, limit, seq if kind == REPLY else None)
                data = HEADER.pack(size) + payload if auth is None else auth.seal(payload)
                if head is not None:
                    data = head + data
                sent += len(data)
                self._transport.send(data)
            except ConnectionClosed as exc:
                self._lost(str(exc))  # the stream may be cut mid-frame: it cannot go on
                raise self._closed_error() from None
            self._bytes_out += sent
            self._messages_out += 1
            if kind == REQUEST:
                self._requests += 1

    @staticmethod
    def _checked_buffers(buffers: list[Any], body: int, limit: int) -> list[memoryview]:
        """Byte views of a message's buffers; the whole message must fit max_message_size."""
        if len(buffers) > MAX_BUFFERS:
            raise ProtocolError(f"a message may carry at most {MAX_BUFFERS} large buffers")
        views = [memoryview(buffer).cast("B") for buffer in buffers]
        total = body + sum(view.nbytes for view in views)
        if total > limit:
            raise ProtocolError(f"message of {total} bytes exceeds max_message_size "
                                f"({limit} bytes); not sent")
        return views

    def _framed(self, payload: bytes) -> bytes:
        """A frame of ``payload``, tagged when the session has keys (counts it: send it)."""
        auth = self._send_auth
        return HEADER.pack(len(payload)) + payload if auth is None else auth.seal(payload)

    def _send_buffers(self, views: list[memoryview], limit: int, reply_to: int | None) -> int:
        """The BUFFERS frame and the raw buffers, each sent as it is (no copy); a buffer's
        tag is computed over its view and sent after it."""
        send = self._transport.send
        header = pack(buffers_header(views, reply_to))
        frame(header, limit)  # refuses an oversized one before anything is sent
        data = self._framed(header)
        send(data)
        auth = self._send_auth
        for view in views:
            send(HEADER.pack(view.nbytes))
            send(view)
            if auth is not None:
                send(auth.tag(view.nbytes, view))
        return sum(view.nbytes + 4 for view in views)

    def _send_ack(self) -> None:
        """Tell the session's peer how much of its stream arrived, so it can let go of
        what it keeps for re-sending. Only when no other thread is sending: a reader never
        waits for the send lock (the next read tries again)."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            session = self._session
            received = session.received
            data = self._framed(pack([Kind.NOTIFY, Op.ACK, received]))
            session.ack_sent(received)
            self._transport.send(data)
            self._bytes_out += len(data)
            self._messages_out += 1
        except ConnectionClosed as exc:
            self._lost(str(exc))
        finally:
            self._send_lock.release()

    # -- proxies and releases -----------------------------------------------------------------

    def _describe(self, cls: type) -> Descriptor:
        descriptor = self._descriptors.get(cls)
        if descriptor is None:
            descriptor = self._descriptors[cls] = describe_type(cls, self._policy)
        return descriptor

    def _make_proxy(self, oid: int, descriptor: Descriptor) -> BaseNetref:
        ref = self._proxies.get(oid)
        proxy = ref() if ref is not None else None
        if proxy is not None:
            object.__setattr__(proxy, "_rk_refs", proxy._rk_refs + 1)
            return proxy
        proxy = new_proxy(self, oid, descriptor, self._netref_classes)
        self._proxies[oid] = weakref.ref(proxy)
        self._boxer.own_proxy_types.add(type(proxy))
        return proxy

    def _proxy_oid(self, obj: Any) -> int | None:
        if isinstance(obj, BaseNetref) and obj._rk_conn is self:
            return obj._rk_oid
        return None

    def _queue_release(self, oid: int, count: int) -> None:
        if not self._closed:
            self._releases.append((oid, count))

    def _take_releases(self) -> list[tuple[int, int]]:
        releases = []
        pop = self._releases.popleft
        while True:
            try:
                releases.append(pop())
            except IndexError:
                break
        proxies = self._proxies
        for oid, _count in releases:
            ref = proxies.get(oid)
            if ref is not None and ref() is None:
                proxies.pop(oid, None)
        self._releases_sent += len(releases)
        return releases

    def _flush_releases(self) -> None:
        if not self._releases or self._closed:
            return
        with self._send_lock:
            releases = self._take_releases()
            if releases:
                payload = pack([Kind.NOTIFY, Op.DEL, releases])
                frame(payload, self._config.max_message_size)  # refuses an oversized one
                data = self._framed(payload)
                try:
                    self._transport.send(data)
                except ConnectionClosed as exc:
                    self._lost(str(exc))
                    return
                self._bytes_out += len(data)
                self._messages_out += 1

    # -- closing -----------------------------------------------------------------------------

    def _closed_error(self) -> ConnectionClosed:
        reason = f": {self._close_reason}" if self._close_reason else ""
        return ConnectionClosed(f"connection to {self.peer} is closed{reason}")

    def _lost(self, reason: str) -> None:
        if not self._closed:
            self._close_reason = reason
        self._shutdown(polite=False)

    def close(self, reason: str = "closed") -> None:
        """Close the connection; pending requests fail with ConnectionClosed. Returns
        within about ``CLOSE_GRACE`` seconds even when the peer reads nothing."""
        if not self._closed:
            self._close_reason = reason
        self._shutdown(polite=True)

    def abort(self, reason: str = "aborted") -> None:
        """Close at once, without a last word to the peer."""
        self._lost(reason)

    def _shutdown(self, polite: bool) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        # A last word to the peer only if no other thread is stuck sending, and only what
        # fits at once; then closing the transport ends any send in progress.
        if polite and self._send_lock.acquire(timeout=CLOSE_GRACE):
            try:
                self._transport.send(self._framed(_CLOSE_MESSAGE), 0)
            except Exception:
                pass
            finally:
                self._send_lock.release()
        self._transport.close()
        with self._cond:
            self._cond.notify_all()
        error = self._closed_error()
        for result in list(self._async.values()):
            result.set_outcome((False, error))
        self._async.clear()
        self._table.clear()
        self._releases.clear()
        # Everything kept about the peer's types goes with the connection.
        self._boxer.forget()
        self._netref_classes = {}
        self._descriptors.clear()
        self._ctx.close()
        self._root = None
        if not self._disconnected:
            self._disconnected = True
            try:
                self._service.on_disconnect(self)
            except Exception:
                log.exception("on_disconnect of %s failed", type(self._service).__name__)
            for callback in list(self.on_close):
                try:
                    callback(self)
                except Exception:
                    log.exception("on_close callback failed")


def _effective_config(service: Any, config: Any) -> ProtocolConfig:
    """The user's config over the service's defaults (a classic service allows all attrs)."""
    if isinstance(config, ProtocolConfig):
        return config
    make_config(config)  # validate what the user wrote, naming their key
    overrides = getattr(service, "_protocol_config", None) or {}
    return make_config({**overrides, **(config or {})})


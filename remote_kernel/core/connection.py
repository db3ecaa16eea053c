"""Connection: runs the protocol over a transport.

Theory of operation
-------------------
There is no dedicated reader thread. Whichever thread needs a message takes the *reader
role*, reads and decodes one frame, gives the role back and dispatches: a reply is handed
to the thread or :class:`AsyncResult` that waits for it, a request is served right there.
So a thread waiting for its reply serves the peer's callbacks meanwhile (callbacks nest to
any depth), several threads can wait at once, and the fast path of a call is one send and
one read on the calling thread.

The class is written in four parts, one concern each: this module (building, the public
API, requests, proxies, closing), ``sending.py`` (one message out, all or nothing, and the
release batches), ``reading.py`` (the reader role, decoding, the threads waiting for
replies) and ``dispatch.py`` (what is done with a message read: replies handed over,
requests served, notifications; the serving loops and the watchdog's hooks).

A request that takes long blocks the thread that read it; a watchdog then lends the
connection another reader, so a CANCEL for the long request is still read and acted upon.
``close()`` waits for a sender at most ``CLOSE_GRACE`` seconds, then closes the transport
under it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgpack

from remote_kernel.config import ProtocolConfig, make_config
from remote_kernel.core import interrupt as _interrupt
from remote_kernel.core.asyncresult import AsyncResult
from remote_kernel.core.dispatch import POLL_BATCH, Dispatching
from remote_kernel.core.hooks import PROCESS_HOOKS, ConnectionHooks, OutputRouting
from remote_kernel.core.netref import BaseNetref, new_proxy
from remote_kernel.core.reading import DELIVERY_SLICE, READ_SLICE, Reading
from remote_kernel.core.sending import MAX_BUFFERS, Sending
from remote_kernel.core.serving import _watchdog
from remote_kernel.core.transport import FrameReader, Transport
from remote_kernel.errors import (
    ConnectionClosed,
    ProtocolError,
    RemoteKernelError,
    RequestTimeout,
    mark_stop,
    rendered_by,
)
from remote_kernel.protocol.boxing import Boxer, Kwargs
from remote_kernel.protocol.codec import CHUNK, MAX_FRAME, pack
from remote_kernel.protocol.describe import Descriptor, describe_type
from remote_kernel.protocol.handlers import RequestContext
from remote_kernel.protocol.landing import Landing
from remote_kernel.protocol.messages import CALLATTR, REQUEST, Kind, Op
from remote_kernel.protocol.objects import ObjectTable
from remote_kernel.protocol.policy import AttributePolicy
from remote_kernel.remote.selfdisplay import display_reply

log = logging.getLogger("remote_kernel.core.connection")

_DEFAULT = object()
CANCEL_GRACE = 1.0  # how long an interrupted wait gives the peer to answer the cancel
CLOSE_GRACE = 0.5  # close(): how long to wait for a sender before cutting it off
_CLOSE_MESSAGE = pack([Kind.NOTIFY, Op.CLOSE])


class Connection(Reading, Sending, Dispatching):
    """One end of a remote_kernel connection. Symmetric: both ends serve requests.

    ``transport``: the link (core/transport.py). ``service``: what this side offers the
    peer (its root). ``config``: a ProtocolConfig or a dict of overrides. ``name``: the
    peer's name in messages. ``reader``: the handshake's frame reader, which may hold the
    first bytes already. ``hooks``: what the layer above adds (core/hooks.py: hooks run
    for each new connection, where a request's output goes); the process's shared one when
    not given.
    """

    def __init__(self, transport: Transport, service: Any = None, config: Any = None,
                 name: str | None = None, reader: FrameReader | None = None,
                 hooks: ConnectionHooks | None = None) -> None:
        from remote_kernel.core.service import VoidService, make_service

        self._hooks = hooks = PROCESS_HOOKS if hooks is None else hooks

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
        self._frame_limit = min(self._config.max_message_size, MAX_FRAME)
        self._policy = AttributePolicy(self._config)
        self._table = ObjectTable(origin=hooks.capture_origin)
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
        self._ctx = RequestContext(self._service, self._policy, display=display_reply)
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
        self.variables_requested = False  # request_variables(): the peer sends frame variables
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
        # trust_output=True)``, ``%remote connect --trust``); see outputs/filter.py.
        self.trust_output = False
        _watchdog.track(self)
        self._service.on_connect(self)
        hooks.connection_made(self)


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
        try:
            return self.root.eval(source)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
            raise

    def execute(self, source: str) -> Any:
        try:
            return self.root.execute(source)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
            raise

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
            try:
                self._send_message(REQUEST, seq, op, args)
            except KeyboardInterrupt as exc:
                # The request may be on its way (whole: see sending.py): cancel it there too.
                self._cancel(seq)
                mark_stop(exc, self.peer, self._hooks.error_rendering)
                raise
            ok, value = self._wait_reply(seq, timeout)
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
        raise rendered_by(value, self._hooks.error_rendering)

    def _as_local_stop(self, seq: int, error: BaseException) -> BaseException:
        """The KeyboardInterrupt a peer sends back for a request WE cancelled is our own
        Stop: a real KeyboardInterrupt here. Any other one stays a RemoteError, so a peer
        cannot interrupt us uninvited."""
        if seq not in self._interrupted:
            return error
        self._interrupted.discard(seq)
        if getattr(error, "remote_type", "") == "builtins.KeyboardInterrupt":
            return mark_stop(KeyboardInterrupt(), self.peer, self._hooks.error_rendering)
        return error

    def call(self, obj: Any, name: str, /, *args: Any, timeout: Any = _DEFAULT,
             **kwargs: Any) -> Any:
        """``obj.name(*args, **kwargs)`` on the peer in one round trip, as a netref method
        call is, waiting at most ``timeout`` seconds (default: the config's
        ``sync_request_timeout``; None: as long as it takes) before raising
        :class:`~remote_kernel.errors.RequestTimeout`. ``obj`` is a netref of this
        connection (or an object the peer holds a reference to). A remote keyword argument
        called ``timeout`` goes through :meth:`callattr`."""
        try:
            return self.sync_request(CALLATTR, obj, name, args,
                                     Kwargs(kwargs) if kwargs else None, timeout=timeout)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
            raise

    def callattr(self, obj: Any, name: str, args: tuple, kwargs: dict | None,
                 timeout: Any = _DEFAULT) -> Any:
        """``obj.name(*args, **kwargs)`` on the peer, arguments given as a tuple and a dict."""
        try:
            return self.sync_request(CALLATTR, obj, name, args,
                                     Kwargs(kwargs) if kwargs else None, timeout=timeout)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
            raise

    # -- notebook gestures: one request each, with a timeout (the IPython layer's calls) ---

    def object_info(self, obj: Any, attribute: str | None = None, detail_level: int = 0, *,
                    timeout: Any = _DEFAULT) -> dict[str, Any]:
        """What ``obj?`` shows (of ``obj.attribute`` when given): type, name, docstring,
        signature, file, source (``detail_level`` 1)."""
        return self.sync_request(Op.OINFO, obj, attribute, detail_level, timeout=timeout)

    def display(self, obj: Any, include: Any = None, exclude: Any = None, *,
                timeout: Any = _DEFAULT) -> tuple:
        """How the peer displays ``obj``: (data, metadata), or for an object that displays
        itself (data, metadata, outputs, handled) (remote/selfdisplay.py)."""
        return self.sync_request(Op.DISPLAY, obj, tuple(include) if include else None,
                                 tuple(exclude) if exclude else None, timeout=timeout)

    def completions(self, obj: Any, path: tuple = (), *, timeout: Any = _DEFAULT) -> tuple:
        """The attribute names to complete after ``obj`` (reached through ``path``)."""
        return self.sync_request(Op.COMPLETE, obj, path, timeout=timeout)

    def key_completions(self, obj: Any, *, timeout: Any = _DEFAULT) -> tuple:
        """The keys to complete in ``obj[``: a mapping's keys, as the peer lists them."""
        return self.sync_request(Op.KEYS, obj, timeout=timeout)

    def children(self, obj: Any, path: tuple, limit: int, *,
                 timeout: Any = _DEFAULT) -> tuple:
        """The object browser: at most ``limit`` children of what ``path`` reaches from
        ``obj``, each a tuple of (field, value) pairs."""
        return self.sync_request(Op.CHILDREN, obj, path, limit, timeout=timeout)

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
        except BaseException as exc:
            self._async.pop(seq, None)
            if into is not None:
                self._landings.pop(seq, None)
                into.withdraw()
            if isinstance(exc, KeyboardInterrupt):  # it may be on its way: cancel it there
                self._cancel(seq)
                mark_stop(exc, self.peer, self._hooks.error_rendering)
            raise
        return result

    def forget(self, result: AsyncResult) -> None:
        """No one waits for ``result`` any more: its reply is dropped when it comes, and
        memory offered for it is no longer handed to a frame that has not started (one
        that has keeps its offer until the caller withdraws it, see landing.py)."""
        self._async.pop(result._seq, None)
        self._landings.pop(result._seq, None)

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

    def request_variables(self, wanted: bool = True) -> None:
        """Ask the peer to send, with each frame of the exceptions it raises here, the
        variables of the frame's line and their reprs: what IPython's ``%xmode Verbose``
        shows under a local frame. One notification, no reply; a peer that does not know
        it, or whose service is not classic (it could not read them otherwise), ignores it."""
        if wanted != self.variables_requested and not self._closed:
            self._send_message(Kind.NOTIFY, None, Op.VARIABLES, (bool(wanted),))
            self.variables_requested = bool(wanted)

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

    # -- closing -----------------------------------------------------------------------------

    def _closed_error(self) -> ConnectionClosed:
        reason = f": {self._close_reason}" if self._close_reason else ""
        return rendered_by(ConnectionClosed(f"connection to {self.peer} is closed{reason}"),
                           self._hooks.error_rendering)

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


__all__ = ["CANCEL_GRACE", "CLOSE_GRACE", "DELIVERY_SLICE", "MAX_BUFFERS", "POLL_BATCH",
           "READ_SLICE", "Connection", "ConnectionHooks", "OutputRouting"]

"""Dispatch and serving: what a Connection does with a message it read.

A reply goes to the thread or AsyncResult waiting for it (reading.py), a request is served
on the thread that read it, a notification (releases, cancel, acknowledgement, close) is
acted upon. A request that takes long blocks the thread that read it; the watchdog
(serving.py) then lends the connection another reader, so a CANCEL for the long request is
still read and acted upon (the request's thread gets ``KeyboardInterrupt``). Part of
:class:`~remote_kernel.core.connection.Connection`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from remote_kernel.core import interrupt as _interrupt
from remote_kernel.core.hooks import ConnectionHooks, OutputRouting
from remote_kernel.core.reading import READ_SLICE, Reading
from remote_kernel.core.service import ClassicService
from remote_kernel.core.serving import BgServingThread, _watchdog
from remote_kernel.core.transport import FrameReader
from remote_kernel.errors import ConnectionClosed, ProtocolError, RemoteError
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.handlers import HANDLERS, RequestContext
from remote_kernel.protocol.messages import EXCEPTION, NOTIFY, REPLY, REQUEST, Kind, Op
from remote_kernel.protocol.objects import ObjectTable

log = logging.getLogger("remote_kernel.core.connection")

POLL_BATCH = 64  # poll_all(): messages served per call once its timeout has passed
_get_ident = threading.get_ident
_WAIT_CODE = Reading._wait_reply.__code__


class Dispatching:
    """Dispatch, serving requests and notifications, and the serving loops."""

    peer: str
    _hooks: ConnectionHooks
    _ctx: RequestContext
    _table: ObjectTable
    _boxer: Boxer
    _service: Any
    _reader: FrameReader
    _session: Any
    _delivering: set[int]
    _interrupted: set[int]
    _running: dict[int, tuple[int, _interrupt.CancelToken]]
    _running_lock: threading.Lock
    _busy_since: float | None
    _lent_reader: bool
    _recv_lock: threading.Lock
    _closed: bool

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, message: tuple) -> None:
        kind = message[0]
        if type(kind) is not int or type(message[1]) is not int:
            self._delivering.discard(_get_ident())
            raise self._protocol_violation("message kinds, opcodes and sequence numbers "
                                           "must be integers")
        if kind == REPLY or kind == EXCEPTION:
            try:
                if len(message) != 3:
                    raise self._protocol_violation("malformed reply")
                self._deliver(message[1], (kind == REPLY, message[2]))
            finally:
                self._delivering.discard(_get_ident())
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

    # -- serving -----------------------------------------------------------------------------

    def _serve_request(self, seq: Any, op: Any, args: tuple) -> None:
        handler = HANDLERS.get(op) if type(op) is int else None
        ident = _get_ident()
        token, previous = _interrupt.enter_request(ident)
        # Registering needs no lock (dict stores are atomic); ending does (see _end_request).
        self._running[seq] = (ident, token)
        if self._busy_since is None:
            self._busy_since = time.monotonic()
            if _watchdog._thread is None:
                _watchdog.kick()
        outcome: tuple[bool, Any] | None = None
        route = self._route_output(args) if self._hooks.output_routing is not None else None
        try:
            try:
                if handler is None:
                    raise ProtocolError(f"unknown request opcode {op!r}")
                outcome = (True, handler(self._ctx, *args))
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the peer
                outcome = (False, exc)
                if isinstance(exc, KeyboardInterrupt) and not token.cancelled \
                        and not isinstance(exc, RemoteError):
                    self._stop_in_callback()
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

    def _route_output(self, args: tuple) -> tuple[OutputRouting, Any] | None:
        """Output of a request addressed to a local object goes where that object came
        from (see OutputRouting); (routing, token) to undo it, or None."""
        routing = self._hooks.output_routing
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
                _interrupt.raise_in_thread(_get_ident(), None)

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

    def _stop_in_callback(self) -> None:
        """A Stop of this side landed in a request of the peer's that this thread serves.
        If that request is a callback nested in this thread's own call to the peer, the
        call's KeyboardInterrupt, should the peer's code let the callback's error through,
        is that Stop: one short line, as a Stop during the call itself (``_as_local_stop``),
        not the peer's traceback with the callback's frames. Code on the peer may still
        catch it (``input()`` at a prompt does). Found by walking the stack, on this path
        only, so that no request pays to record its waits."""
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is _WAIT_CODE and frame.f_locals.get("self") is self:
                self._interrupted.add(frame.f_locals["seq"])
                return
            frame = frame.f_back

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
            if type(count) is not int or count < 0 or self._session is None:
                raise self._protocol_violation("malformed acknowledgement")
            try:
                self._session.acknowledged(count)
            except ProtocolError as exc:
                raise self._protocol_violation(str(exc)) from None
        elif op == Op.VARIABLES:
            wanted = args[0] if args else None
            if type(wanted) is not bool:
                raise self._protocol_violation("malformed variables request")
            # Only where the peer could read them anyway: a service of a restricted API
            # keeps its frames' values to itself.
            self._boxer.include_variables = wanted and isinstance(self._service, ClassicService)
        elif op == Op.CLOSE:
            self._lost("closed by the peer")
        # unknown notifications are ignored: they need no answer

    def serve(self, timeout: float | None = 1.0) -> bool:
        """Serve one incoming message; False when none arrived within ``timeout``."""
        if self._closed:
            raise self._closed_error()
        self._flush_releases()
        message = self._take_turn(timeout, -1 if timeout is None else timeout)
        if not message:
            return False
        self._dispatch(message)
        return True

    def serve_all(self) -> None:
        """Serve until the connection closes."""
        take_turn, dispatch = self._take_turn, self._dispatch
        try:
            while not self._closed:
                if self._releases:
                    self._flush_releases()
                message = take_turn(READ_SLICE, READ_SLICE)
                if message:
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


"""The reader role and the threads that wait for replies.

There is no dedicated reader thread. Whichever thread needs a message takes the *reader
role* (``_recv_lock``), reads and decodes one message, gives the role back, wakes the
threads waiting for it, and dispatches what it read. ``_take_turn`` is that role, written
once; every reader goes through it: a caller waiting for its reply (``_wait_reply``, whose
fast path takes its own reply without a hand-over), a thread driving the connection until
something is done (``_drive_until``: an AsyncResult's wait, a cancel's grace), ``serve`` /
``poll`` and ``serve_all``.

A reply read by a thread that does not wait for it is marked as *being delivered* until
``_dispatch`` hands it over; meanwhile other readers block only briefly
(``DELIVERY_SLICE``), as the reply they wait for may be the one in flight. Part of
:class:`~remote_kernel.core.connection.Connection`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from remote_kernel.config import ProtocolConfig
from remote_kernel.core.asyncresult import AsyncResult
from remote_kernel.core.hooks import ConnectionHooks
from remote_kernel.core.sending import MAX_BUFFERS
from remote_kernel.core.transport import FrameReader, StopMidRead
from remote_kernel.errors import (
    ConnectionClosed,
    ProtocolError,
    RequestTimeout,
    mark_stop,
    rendered_by,
)
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.landing import Landing
from remote_kernel.protocol.messages import (
    BUFFERS,
    EXCEPTION,
    REPLY,
    buffers_announced,
    buffers_reply_to,
)

log = logging.getLogger("remote_kernel.core.connection")

READ_SLICE = 1.0  # seconds a reader blocks before re-checking its deadline
DELIVERY_SLICE = 0.005  # a reader's wait while another thread hands over a reply
WAIT_SLICE = 0.5  # how long a thread waits for the reader role before looking again
_get_ident = threading.get_ident


class Reading:
    """The receiving half of a Connection: the reader role, decoding (with out-of-band
    buffers and landing offers) and the hand-over of replies to the threads waiting."""

    peer: str
    _boxer: Boxer
    _config: ProtocolConfig
    _reader: FrameReader
    _session: Any  # net/session.py's resumable transport, or None
    _announced_state: str
    on_state: list[Callable[[str], None]]
    _recv_lock: threading.Lock
    _cond: threading.Condition
    _waiters: int  # threads waiting on _cond for the reader role or a reply
    _replies: dict[int, tuple[bool, Any]]
    _delivering: set[int]  # threads holding a reply not yet handed over
    _pending: set[int]
    _interrupted: set[int]
    _async: dict[int, AsyncResult]
    _buffers_expected: int
    _buffers_bytes: int
    _landings: dict[int, Landing]
    _landing_seq: int | None
    _closed: bool
    _messages_in: int
    _bytes_in: int
    _hooks: ConnectionHooks

    # -- the reader role -------------------------------------------------------------------

    def _take_turn(self, wait: float | None, lock_timeout: float = 0, own: int | None = None,
                   done: Callable[[], bool] | None = None) -> tuple:
        """Take the reader role (waiting up to ``lock_timeout``; -1: as long as it takes),
        read one message within ``wait``, give the role back and wake the waiters.
        Returns the message; ``()`` when this thread read nothing (or ``done()`` already
        held once it had the role); None when another thread holds the role. A reply is
        marked as being delivered, unless it answers ``own`` (its caller takes it)."""
        lock = self._recv_lock
        if not lock.acquire(True, lock_timeout):
            return None
        try:
            if done is not None and done():
                return ()
            if self._delivering:
                wait = DELIVERY_SLICE if wait is None else min(wait, DELIVERY_SLICE)
            message = self._read_message(wait)
            if message is None:
                return ()
            if message[1] != own:
                kind = message[0]
                if kind == REPLY or kind == EXCEPTION:
                    self._delivering.add(_get_ident())
            return message
        finally:
            lock.release()
            if self._waiters:
                self._wake_waiters()

    def _wait_reply(self, seq: int, timeout: float | None) -> tuple[bool, Any]:
        """The outcome of request ``seq``, serving the peer meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # Fast path: no other thread waits, so the next message is most likely this
            # reply: taken right here, with no hand-over.
            if not self._waiters:
                message = self._take_turn(
                    READ_SLICE if timeout is None else min(timeout, READ_SLICE), 0, seq)
                if message:
                    if message[1] == seq and len(message) == 3:
                        kind = message[0]
                        if kind == REPLY:
                            return True, message[2]
                        if kind == EXCEPTION:
                            return False, message[2]
                    self._dispatch(message)
            replies = self._replies
            self._drive_until(lambda: seq in replies, deadline)
        except RequestTimeout:
            self._replies.pop(seq, None)
            raise rendered_by(RequestTimeout(f"no reply from {self.peer} within {timeout} s"),
                              self._hooks.error_rendering) from None
        except KeyboardInterrupt as exc:  # the user's Ctrl-C / Stop: cancel it over there
            self._cancel(seq)
            # One short line in IPython, no frames of the wait.
            mark_stop(exc, self.peer, self._hooks.error_rendering)
            raise
        return replies.pop(seq)

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
            message = self._take_turn(
                READ_SLICE if remaining is None else min(remaining, READ_SLICE), 0, None, done)
            if message:
                self._dispatch(message)
            elif message is None:  # another thread reads: wait until it wakes us
                with self._cond:
                    if done() or self._closed:
                        continue
                    self._waiters += 1
                    try:
                        self._cond.wait(WAIT_SLICE if remaining is None
                                        else min(remaining, WAIT_SLICE))
                    finally:
                        self._waiters -= 1

    def _poll_once(self) -> bool:
        """Serve one message that is already there, if this thread can read; never blocks."""
        message = self._take_turn(0)
        if not message:
            return False
        self._dispatch(message)
        return True

    def _state_changed(self, state: str) -> None:
        """The session's state changed (its own thread): tell the listeners. A session
        that ended closes the connection at once, read or not (its close callbacks run)."""
        if state == "closed" and not self._closed:
            self._lost(self._session.failure or "the session ended")
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
        if state == "unreachable" and self._session.quiet:
            self._announced_state = previous  # a link given up after a Stop: nothing to say
        elif state == "unreachable":
            window = self._session.resume_window
            print(f"{self.peer} unreachable: waiting for the link to return (the session is "
                  f"kept for {window:g} s; Stop to give up)", file=sys.stderr, flush=True)
        elif state == "open" and previous == "unreachable":
            print(f"{self.peer} reachable again: session resumed", file=sys.stderr, flush=True)
        elif state == "resuming" and previous == "unreachable":
            self._announced_state = previous  # said once it is open again

    def _wake_waiters(self) -> None:
        if self._waiters:
            with self._cond:
                self._cond.notify_all()

    # -- decoding --------------------------------------------------------------------------

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
        except StopMidRead:
            if self._session is None:  # (a session resumes instead: net/session.py)
                self._lost("a Stop landed in the middle of a read: the stream cannot go on")
            raise

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

    # -- the hand-over --------------------------------------------------------------------

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


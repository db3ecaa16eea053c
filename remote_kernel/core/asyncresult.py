"""AsyncResult: the future result of an asynchronous request."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from remote_kernel.errors import (
    ConnectionClosed,
    ProtocolError,
    RequestTimeout,
    mark_stop,
    rendered_by,
)

if TYPE_CHECKING:
    from remote_kernel.core.connection import Connection

log = logging.getLogger(__name__)

# One lock for every result: it is held only to swap an outcome or a callback list in,
# and a batch makes thousands of results (a lock each would cost more than the call).
_OUTCOME_LOCK = threading.Lock()
_NO_CALLBACKS: list = []  # shared while a result has none (never appended to)


class AsyncResult:
    """The future result of an asynchronous request.

    ``ready``, ``error``, ``value`` (re-raises), ``wait(timeout)``, ``add_callback(fn)``,
    ``set_expiry(seconds)``, ``expired``; ``await``-able.
    """

    __slots__ = ("_conn", "_seq", "_outcome", "_callbacks", "_deadline", "__weakref__")

    def __init__(self, conn: Connection, seq: int) -> None:
        self._conn = conn
        self._seq = seq
        self._outcome: tuple[bool, Any] | None = None
        self._callbacks: list[Callable[[AsyncResult], Any]] = _NO_CALLBACKS
        self._deadline: float | None = None

    def __repr__(self) -> str:
        state = "ready" if self._outcome is not None else (
            "expired" if self.expired else "pending")
        return f"<AsyncResult #{self._seq} from {self._conn.peer} ({state})>"

    def set_outcome(self, outcome: tuple[bool, Any]) -> None:
        """Called by the connection with (ok, value) when the reply arrives; once only."""
        with _OUTCOME_LOCK:
            if self._outcome is not None:
                return
            self._outcome = outcome
            callbacks, self._callbacks = self._callbacks, _NO_CALLBACKS
        for callback in callbacks:
            self._run_callback(callback)

    @staticmethod
    def set_outcomes(results: Sequence[AsyncResult],
                     outcomes: Sequence[tuple[Any, Any]]) -> None:
        """``set_outcome`` for many results at once (a batch's): one lock, then callbacks."""
        pending = []
        with _OUTCOME_LOCK:
            for result, outcome in zip(results, outcomes, strict=True):
                if result._outcome is None:
                    result._outcome = outcome
                    if result._callbacks:
                        pending.append(result)
        for result in pending:
            callbacks, result._callbacks = result._callbacks, _NO_CALLBACKS
            for callback in callbacks:
                result._run_callback(callback)

    def _run_callback(self, callback: Callable[[AsyncResult], Any]) -> None:
        try:
            callback(self)
        except Exception:
            log.exception("AsyncResult callback %r failed", callback)

    @property
    def ready(self) -> bool:
        """True once the result arrived; reads what is already there, never blocks."""
        conn = self._conn
        try:
            while self._outcome is None and not conn.closed and conn._poll_once():
                pass
        except (ConnectionClosed, ProtocolError):
            pass
        return self._outcome is not None

    @property
    def expired(self) -> bool:
        return (self._outcome is None and self._deadline is not None
                and time.monotonic() > self._deadline)

    def set_expiry(self, seconds: float | None) -> None:
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def add_callback(self, callback: Callable[[AsyncResult], Any]) -> None:
        with _OUTCOME_LOCK:
            if self._outcome is None:
                if self._callbacks is _NO_CALLBACKS:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        self._run_callback(callback)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the result; ``RequestTimeout`` if it is not ready in time."""
        if self._outcome is not None:
            return
        if timeout is None:
            timeout = self._conn.config.sync_request_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._deadline is not None:
            deadline = self._deadline if deadline is None else min(deadline, self._deadline)
        try:
            self._conn._drive_until(lambda: self._outcome is not None, deadline)
        except RequestTimeout:
            what = "expired" if self.expired else f"not ready within {timeout} s"
            raise rendered_by(RequestTimeout(f"result #{self._seq} from {self._conn.peer} {what}"),
                              self._conn._hooks.error_rendering) from None
        except KeyboardInterrupt as exc:
            self._conn._cancel(self._seq)
            mark_stop(exc, self._conn.peer, self._conn._hooks.error_rendering)
            raise

    @property
    def error(self) -> bool:
        self.wait()
        assert self._outcome is not None
        return not self._outcome[0]

    @property
    def value(self) -> Any:
        self.wait()
        assert self._outcome is not None
        ok, value = self._outcome
        if ok:
            return value
        raise rendered_by(value, self._conn._hooks.error_rendering)

    def __await__(self) -> Any:
        if self._outcome is None:
            loop = asyncio.get_running_loop()
            yield from loop.run_in_executor(None, self.wait).__await__()
        return self.value

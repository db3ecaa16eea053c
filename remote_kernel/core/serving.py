"""Serving a connection from other threads: the user's background thread, and the
watchdog that lends a reader to connections busy with long requests."""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import TYPE_CHECKING

from remote_kernel.core import interrupt as _interrupt
from remote_kernel.errors import ConnectionClosed, ProtocolError

if TYPE_CHECKING:
    from remote_kernel.core.connection import Connection


class BgServingThread:
    """Serves a connection from a background thread until stopped or closed."""

    def __init__(self, conn: Connection, interval: float = 0.1) -> None:
        self._conn = conn
        self._interval = interval
        self._active = True
        self._thread = threading.Thread(target=self._run, name=f"rk-serve-{conn.peer}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while self._active and not self._conn.closed:
                self._conn.serve(self._interval)
        except (ConnectionClosed, ProtocolError):
            pass

    def stop(self, timeout: float = 5.0) -> None:
        self._active = False
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class _Watchdog:
    """Lends a reader to connections whose readers are all busy serving long requests, so
    their cancels and replies are still read.

    Its thread runs only while some connection is busy serving a request: a connection
    ``kick()``s it when it becomes busy, and it ends once none is, putting the original
    ``time.sleep`` back as it goes (see core/interrupt.py). It holds connections
    weakly and never between checks, so it keeps no connection alive."""

    LONG_REQUEST = 0.1

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def track(self, conn: Connection) -> None:
        with self._lock:
            self._connections.add(conn)

    def close_all(self) -> None:
        """At interpreter exit: every open connection says goodbye (the peer frees the
        session at once, instead of keeping it for a resume that will not come)."""
        for conn in list(self._connections):
            if not conn.closed:
                try:
                    conn.close("the process is exiting")
                except Exception:
                    pass

    def kick(self) -> None:
        """A tracked connection became busy: make sure the thread runs."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="rk-watchdog",
                                                    daemon=True)
                    self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        while True:
            _interrupt.original_sleep(self.LONG_REQUEST)
            with self._lock:
                if self._check():
                    continue
                self._thread = None
            _interrupt.restore_sleep_if_idle()
            # A connection that became busy just before the line above saw the thread
            # still set and did not kick: look once more now that it is unset.
            if self._any_busy():
                self.kick()
            return

    def _check(self) -> bool:
        """Lend readers where needed; False when no connection is busy. Runs in its own
        frame so that no connection stays referenced while the thread sleeps."""
        now = time.monotonic()
        busy = False
        for conn in list(self._connections):
            if conn.closed:
                self._connections.discard(conn)
                continue
            if conn.busy:
                busy = True
            if conn.claim_lent_reader(now, self.LONG_REQUEST):
                threading.Thread(target=conn.serve_while_busy, daemon=True,
                                 name=f"rk-reader-{conn.peer}").start()
        return busy

    def _any_busy(self) -> bool:
        return any(conn.busy and not conn.closed for conn in list(self._connections))


_watchdog = _Watchdog()
atexit.register(_watchdog.close_all)

"""Serving a connection from other threads: the user's background thread, and the
watchdog that lends a reader to connections busy with long requests."""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING

from remote_kernel import _interrupt
from remote_kernel.errors import ConnectionClosed, ProtocolError

if TYPE_CHECKING:
    from remote_kernel.connection import Connection


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
    their cancels and replies are still read."""

    LONG_REQUEST = 0.1

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def track(self, conn: Connection) -> None:
        with self._lock:
            self._connections.add(conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rk-watchdog",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            _interrupt.original_sleep(self.LONG_REQUEST)
            now = time.monotonic()
            for conn in list(self._connections):
                since = conn._busy_since
                if (since is not None and now - since > self.LONG_REQUEST
                        and not conn._closed and not conn._recv_lock.locked()
                        and not conn._lent_reader):
                    conn._lent_reader = True
                    threading.Thread(target=self._read_for, args=(conn,), daemon=True,
                                     name=f"rk-reader-{conn.peer}").start()

    @staticmethod
    def _read_for(conn: Connection) -> None:
        try:
            while conn._busy_since is not None and not conn._closed:
                conn.serve(0.1)
        except (ConnectionClosed, ProtocolError):
            pass
        finally:
            conn._lent_reader = False


_watchdog = _Watchdog()

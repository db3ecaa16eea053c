"""Serving connections from the kernel's event loop while the kernel is idle.

Inside ipykernel the main thread runs a tornado IOLoop. Each connection's socket is
registered with it, so a request from the peer (a device calling a notebook callback) is
served in the main thread as soon as it arrives, with its prints reaching the notebook, and
no thread for the user to manage. While a cell runs, the main thread is busy: requests then
are served by whichever thread waits for a reply (the cell itself, when it is waiting on
the same connection), or wait for the cell to end. After each cell, frames that arrived
together with a reply are served too.

The loop never spins: when another thread holds the connection's reader role (it dispatches
what arrives), the descriptor is left alone for ``BUSY_RETRY`` seconds instead of being
reported readable again and again; and each wake-up serves a bounded batch
(``Connection.poll_all``), so a flood from a peer cannot starve the kernel's own messages.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from remote_kernel.core.connection import Connection
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.errors import ConnectionClosed, ProtocolError
from remote_kernel.ipython.registry import ConnectionEntry, get_registry

log = logging.getLogger("remote_kernel.ipython.loop")
BUSY_RETRY = 0.05  # seconds to look away from a descriptor another thread is reading


def kernel_loop(shell: Any) -> Any:
    """The kernel's IOLoop, or None outside ipykernel (terminal IPython, tests)."""
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        from tornado.ioloop import IOLoop
    except ImportError:
        return None
    return IOLoop.current()


class LoopServer:
    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self._fds: dict[int, Any] = {}

    def attach(self, entry: ConnectionEntry) -> None:
        if entry.conn is not None:
            self.attach_connection(entry.conn)

    def attach_connection(self, conn: Connection) -> None:
        if conn.closed or conn.fileno() in self._fds and self._fds[conn.fileno()] is conn:
            return
        fd = conn.fileno()
        self.detach_fd(fd)
        self._listen(fd, conn)
        self._fds[fd] = conn

    def _listen(self, fd: int, conn: Connection) -> None:
        from tornado.ioloop import IOLoop

        self.loop.add_handler(fd, lambda fd, events: self._ready(fd, conn), IOLoop.READ)

    def detach_fd(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            try:
                self.loop.remove_handler(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _ready(self, fd: int, conn: Any) -> None:
        if conn.closed:
            self.detach_fd(fd)
            return
        if conn.reader_busy:
            # Another thread is reading and dispatches what arrives; until it has, the
            # descriptor stays readable, so listening again at once would spin.
            self._pause(fd, conn)
            return
        try:
            conn.poll_all(0)
        except (ConnectionClosed, ProtocolError):
            self.detach_fd(fd)
        except Exception:
            log.exception("serving %s from the kernel loop failed", conn.peer)

    def _pause(self, fd: int, conn: Connection) -> None:
        try:
            self.loop.remove_handler(fd)
        except (KeyError, ValueError, OSError):
            pass
        self.loop.call_later(BUSY_RETRY, self._resume, fd, conn)

    def _resume(self, fd: int, conn: Connection) -> None:
        if self._fds.get(fd) is not conn or conn.closed:
            return  # detached (or replaced) meanwhile
        try:
            self._listen(fd, conn)
        except ValueError:
            pass  # listened to again meanwhile (attached anew)
        except (KeyError, OSError):
            self.detach_fd(fd)

    def drain(self) -> None:
        """Serve what arrived with earlier replies (called after each cell)."""
        for fd, conn in list(self._fds.items()):
            if conn.closed:
                self.detach_fd(fd)
                continue
            try:
                if conn.has_pending_input():
                    conn.poll_all(0)
            except (ConnectionClosed, ProtocolError):
                self.detach_fd(fd)

    def close(self) -> None:
        for fd in list(self._fds):
            self.detach_fd(fd)


_server: LoopServer | None = None


def install(shell: Any) -> LoopServer | None:
    global _server
    loop = kernel_loop(shell)
    if loop is None:
        return None
    registry = get_registry()
    registry.loop = loop
    _server = LoopServer(loop)
    registry.on_open.append(_server.attach)
    for entry in registry.entries.values():
        _server.attach(entry)
    # Connections a cell opens itself (``rk.connect(...)``) are served while idle too; those
    # made in other threads (a Server running in the notebook) have their own reader.
    PROCESS_HOOKS.on_new.append(_attach_if_main_thread)
    shell.events.register("post_run_cell", _post_run_cell)
    return _server


def _attach_if_main_thread(conn: Connection) -> None:
    if _server is not None and threading.current_thread() is threading.main_thread():
        _server.attach_connection(conn)


def _post_run_cell(result: Any = None) -> None:
    if _server is not None:
        _server.drain()


def uninstall(shell: Any) -> None:
    global _server
    if _server is None:
        return
    registry = get_registry()
    if _server.attach in registry.on_open:
        registry.on_open.remove(_server.attach)
    if _attach_if_main_thread in PROCESS_HOOKS.on_new:
        PROCESS_HOOKS.on_new.remove(_attach_if_main_thread)
    try:
        shell.events.unregister("post_run_cell", _post_run_cell)
    except ValueError:
        pass
    _server.close()
    registry.loop = None
    _server = None

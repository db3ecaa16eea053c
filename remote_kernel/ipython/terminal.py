"""Terminal IPython: connections are served at the prompt, so a device callback runs (and
prints, above the prompt) while the user is typing, as in a kernel that is idle.

prompt_toolkit calls an *input hook* in the main thread while it waits for a key; the hook
must return as soon as input (or other work for prompt_toolkit) is ready, which it signals
on ``context.fileno()``. Ours waits on that descriptor and on the connections' sockets
together, and serves a connection whose socket is readable. It is installed as IPython's
event loop hook, the way ``%gui`` installs one (``IPython.terminal.pt_inputhooks.register``
and ``shell.enable_gui``); ``%unload_ext remote_kernel`` removes it. When another event loop
is active (``%gui qt``), the hook is not installed and connections are served only while a
command runs; with ``--simple-prompt`` there is no prompt_toolkit and no hook.
"""

from __future__ import annotations

import logging
import select
import threading
import weakref
from typing import Any

from remote_kernel.core.connection import Connection
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.errors import ConnectionClosed, ProtocolError
from remote_kernel.ipython.registry import ConnectionEntry, get_registry

log = logging.getLogger("remote_kernel.ipython.terminal")

NAME = "remote_kernel"
WAIT = 0.5  # seconds between looks at the list of connections


class PromptServer:
    """Serves the main thread's connections while the prompt waits for input."""

    def __init__(self) -> None:
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()

    def add(self, conn: Connection) -> None:
        self._connections.add(conn)

    def add_entry(self, entry: ConnectionEntry) -> None:
        if entry.conn is not None:
            self.add(entry.conn)

    def add_if_main_thread(self, conn: Connection) -> None:
        if threading.current_thread() is threading.main_thread():
            self.add(conn)

    def inputhook(self, context: Any) -> None:
        """prompt_toolkit's input hook: serve connections until input is ready."""
        while not context.input_is_ready():
            connections = [conn for conn in list(self._connections) if not conn.closed]
            if any(conn.has_pending_input() and not conn.reader_busy for conn in connections):
                ready = [conn.fileno() for conn in connections]
            else:
                try:
                    ready, _, _ = select.select(
                        [context.fileno(), *(conn.fileno() for conn in connections)], [], [],
                        WAIT)
                except (OSError, ValueError):  # a socket closed meanwhile
                    continue
            for conn in connections:
                if conn.fileno() in ready and not conn.reader_busy:
                    self._serve(conn)

    def _serve(self, conn: Connection) -> None:
        try:
            conn.poll_all(0)
        except (ConnectionClosed, ProtocolError):
            self._connections.discard(conn)
        except Exception:
            log.exception("serving %s at the prompt failed", conn.peer)


_server: PromptServer | None = None


def install(shell: Any) -> PromptServer | None:
    """In terminal IPython (prompt_toolkit's prompt), serve connections at the prompt."""
    global _server
    if getattr(shell, "kernel", None) is not None or not hasattr(shell, "pt_app") \
            or getattr(shell, "simple_prompt", True):
        return None
    if shell.active_eventloop not in (None, NAME):
        log.warning("remote_kernel: the %s event loop is active; remote callbacks are served "
                    "only while a command runs", shell.active_eventloop)
        return None
    from IPython.terminal import pt_inputhooks

    server = PromptServer()
    pt_inputhooks.register(NAME, server.inputhook)
    shell.enable_gui(NAME)
    registry = get_registry()
    registry.on_open.append(server.add_entry)
    for entry in registry.entries.values():
        server.add_entry(entry)
    PROCESS_HOOKS.on_new.append(server.add_if_main_thread)
    _server = server
    return server


def uninstall(shell: Any) -> None:
    global _server
    server, _server = _server, None
    if server is None:
        return
    registry = get_registry()
    if server.add_entry in registry.on_open:
        registry.on_open.remove(server.add_entry)
    if server.add_if_main_thread in PROCESS_HOOKS.on_new:
        PROCESS_HOOKS.on_new.remove(server.add_if_main_thread)
    if getattr(shell, "active_eventloop", None) == NAME:
        shell.enable_gui(None)
    from IPython.terminal import pt_inputhooks

    pt_inputhooks.registered.pop(NAME, None)

"""``%xmode Verbose`` for remote frames: while the shell's mode is Verbose, each connection of
this process asks its peer for the variables of its frames' lines
(``Connection.request_variables``), so that a remote traceback lists them under each frame
as a local one does. Checked before each cell (``%xmode`` has no event of its own) and when
a connection is made; a change costs one notification per connection, no round trip.
"""

from __future__ import annotations

import weakref
from typing import Any

from remote_kernel.core.connection import Connection
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.errors import RemoteKernelError

_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
_shell: Any = None


def install(shell: Any) -> None:
    global _shell
    _shell = shell
    if _track not in PROCESS_HOOKS.on_new:
        PROCESS_HOOKS.on_new.append(_track)
    shell.events.register("pre_run_cell", _sync)


def uninstall(shell: Any) -> None:
    global _shell
    if _track in PROCESS_HOOKS.on_new:
        PROCESS_HOOKS.on_new.remove(_track)
    try:
        shell.events.unregister("pre_run_cell", _sync)
    except ValueError:
        pass
    _shell = None
    for conn in list(_connections):
        _ask(conn, False)
    _connections.clear()


def _verbose() -> bool:
    return _shell is not None and getattr(_shell.InteractiveTB, "mode", "") == "Verbose"


def _track(conn: Connection) -> None:
    _connections.add(conn)
    if _verbose():
        _ask(conn, True)


def _sync(info: Any = None) -> None:
    wanted = _verbose()
    for conn in list(_connections):
        if conn.variables_requested != wanted:
            _ask(conn, wanted)


def _ask(conn: Connection, wanted: bool) -> None:
    try:
        conn.request_variables(wanted)
    except (RemoteKernelError, OSError):
        pass  # a closed or broken link: its errors will say so themselves

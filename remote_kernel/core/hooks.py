"""What a layer above adds to the core's objects, given to them when they are built.

A :class:`~remote_kernel.core.connection.Connection` takes ``hooks=`` (a
:class:`ConnectionHooks`: what to call with each new connection, where a request's output
goes, how its errors show) and a :class:`~remote_kernel.core.group.Group` takes
``resolvers=``. Built without them, they use the process's one :data:`PROCESS_HOOKS`, which starts empty (plain core
behaviour) and which the IPython extension fills while it is loaded, so that a connection
that user code opens in a notebook is served from the kernel's loop and prints into the
cell that caused its output. A test or an embedding passes a ``ConnectionHooks()`` of its
own and is independent of whatever else runs in the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from remote_kernel.errors import PLAIN_RENDERING, ErrorRendering

if TYPE_CHECKING:
    from remote_kernel.core.connection import Connection

log = logging.getLogger("remote_kernel.core.connection")


class OutputRouting:
    """Where the output of a request goes: inside ipykernel, a callback prints into the
    notebook cell that sent it across, as ipykernel routes a thread's output to the cell
    that started it. ``capture()`` is called when a local object is first sent to a peer
    (in the sending thread); ``enter(origin)`` around serving a request addressed to that
    object returns a token for ``leave``."""

    def capture(self) -> Any:
        return None

    def enter(self, origin: Any) -> Any:
        return None

    def leave(self, token: Any) -> None:
        pass


class ConnectionHooks:
    """Behaviour added to the connections (and groups) built with this object.

    ``on_new``: called with each new Connection at the end of its constructor (a failing
    hook is logged, never raised). ``output_routing``: an :class:`OutputRouting`, or None
    for output that goes wherever the serving thread's output goes. ``resolvers``: tried in
    order for each member given to a Group; the first that returns a Member wins.
    ``error_rendering``: how the errors a connection raises show in ``_render_traceback_``
    (errors.ErrorRendering; the plain texts by default).
    Consulted when used, so a change applies to the objects already built with it."""

    def __init__(self, on_new: list[Callable[[Connection], None]] | None = None,
                 output_routing: OutputRouting | None = None,
                 resolvers: list[Callable[[Any], Any]] | None = None,
                 error_rendering: ErrorRendering = PLAIN_RENDERING) -> None:
        self.on_new: list[Callable[[Connection], None]] = list(on_new or ())
        self.output_routing = output_routing
        self.resolvers: list[Callable[[Any], Any]] = list(resolvers or ())
        self.error_rendering = error_rendering

    def connection_made(self, conn: Connection) -> None:
        """Run the ``on_new`` hooks for ``conn``."""
        for hook in list(self.on_new):
            try:
                hook(conn)
            except Exception:
                log.exception("new-connection hook %r failed", hook)

    def capture_origin(self) -> Any:
        """Where output caused through an object sent now should go (None: nowhere special)."""
        routing = self.output_routing
        if routing is None:
            return None
        try:
            return routing.capture()
        except Exception:
            log.exception("capturing the output route failed")
            return None


PROCESS_HOOKS = ConnectionHooks()  # what connections and groups get when given none

__all__ = ["PROCESS_HOOKS", "ConnectionHooks", "OutputRouting"]

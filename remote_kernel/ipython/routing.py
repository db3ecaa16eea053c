"""Callback output lands in the cell that handed the callback to the peer.

ipykernel sends a thread's output to the cell that started the thread (each output carries
that cell's parent header). A callback the peer calls later is the same situation: the cell
that first sent the local function (or any local object: a sink, a widget bridge) across is
where its prints and displays belong, whichever cell is current when it runs. So when a local
object is first sent, the running cell's parent message is remembered with it (in the
connection's object table), and a request addressed to that object runs with that parent set
for its thread (``shell.set_thread_parent``), then restored.

Example: cell 2 registers ``on_tick`` with a device; after cell 3 ran, the device calls it
while the kernel is idle; ``print`` in ``on_tick`` appears under cell 2.
"""

from __future__ import annotations

from typing import Any

from remote_kernel.core import connection
from remote_kernel.core.connection import OutputRouting


class CellRouting(OutputRouting):
    """Routes by the parent header of ipykernel's shell (ZMQInteractiveShell)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def capture(self) -> Any:
        parent = self.shell.get_parent()
        return parent if isinstance(parent, dict) and parent.get("header") else None

    def enter(self, origin: Any) -> Any:
        return self.shell.set_thread_parent(origin)

    def leave(self, token: Any) -> None:
        self.shell.reset_thread_parent(token)


def install(shell: Any) -> None:
    """Inside ipykernel (a shell that can set a thread's parent); elsewhere nothing to do."""
    if getattr(shell, "kernel", None) is None or not hasattr(shell, "set_thread_parent"):
        return
    connection.output_routing = CellRouting(shell)


def uninstall(shell: Any) -> None:
    if isinstance(connection.output_routing, CellRouting):
        connection.output_routing = None

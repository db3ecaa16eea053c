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

import contextvars
import sys
from typing import Any

from remote_kernel.core.hooks import PROCESS_HOOKS, OutputRouting


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


class ContextVarRouting(CellRouting):
    """The same for ipykernel before 7.4 (the newest on Python 3.10), which has no
    ``set_thread_parent`` but keeps each parent header in a ``ContextVar`` (read before the
    global fallback): the shell, its displayhook and display publisher, stdout and stderr.
    Setting those for the serving thread (or asyncio context) and resetting them afterwards
    is what ``set_thread_parent`` does in newer versions."""

    def _holders(self) -> list[Any]:
        shell = self.shell
        holders = [shell, getattr(shell, "displayhook", None),
                   getattr(shell, "display_pub", None), sys.stdout, sys.stderr]
        if hasattr(shell, "_data_pub"):
            holders.append(shell.data_pub)
        return [holder for holder in holders
                if isinstance(getattr(holder, "_parent_header", None), contextvars.ContextVar)]

    def enter(self, origin: Any) -> Any:
        from jupyter_client.session import extract_header

        header = extract_header(origin)
        tokens = []
        for holder in self._holders():
            var = holder._parent_header
            # The shell keeps the whole parent message, the others its header.
            tokens.append((var, var.set(origin if holder is self.shell else header)))
        return tokens

    def leave(self, token: Any) -> None:
        for var, reset in reversed(token):
            var.reset(reset)


def install(shell: Any) -> None:
    """Inside ipykernel (a shell that can set a thread's parent); elsewhere nothing to do."""
    if getattr(shell, "kernel", None) is None:
        return
    if hasattr(shell, "set_thread_parent"):
        PROCESS_HOOKS.output_routing = CellRouting(shell)
    elif isinstance(getattr(shell, "_parent_header", None), contextvars.ContextVar):
        PROCESS_HOOKS.output_routing = ContextVarRouting(shell)


def uninstall(shell: Any) -> None:
    if isinstance(PROCESS_HOOKS.output_routing, CellRouting):
        PROCESS_HOOKS.output_routing = None

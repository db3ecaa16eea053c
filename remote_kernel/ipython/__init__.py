"""The IPython extension: ``%load_ext remote_kernel``.

Installs the ``%remote``/``%%remote`` magics, one-request display, completion and
inspection of netrefs, serving of connections while idle (inside ipykernel from the kernel's
event loop, with callback output routed to the cell that sent the callback; in terminal
IPython from the prompt's input hook) and the channel to the JupyterLab panel.
``%unload_ext`` removes all of it.
"""

from __future__ import annotations

import sys
from typing import Any

from remote_kernel.core import group
from remote_kernel.core.hooks import PROCESS_HOOKS
from remote_kernel.ipython import (
    completion,
    display,
    inspection,
    loop,
    routing,
    terminal,
    tracebacks,
    variables,
)
from remote_kernel.ipython.magics import RemoteMagics
from remote_kernel.ipython.registry import get_registry, reset_registry

tracebacks.install()  # importing the IPython layer is enough to render remote errors


def _group_member(item: Any) -> group.Member | None:
    return get_registry().member(item)


def load(shell: Any) -> None:
    shell.register_magics(RemoteMagics)
    if _group_member not in PROCESS_HOOKS.resolvers:  # rk.Group(["pi1"]) finds notebook connections
        PROCESS_HOOKS.resolvers.append(_group_member)
    display.install(shell)
    completion.install(shell)
    inspection.install(shell)
    tracebacks.show_remote_syntax_error(shell)
    tracebacks.show_remote_groups(shell)
    variables.install(shell)
    loop.install(shell)
    routing.install(shell)
    terminal.install(shell)
    if getattr(shell, "kernel", None) is not None:
        try:
            from remote_kernel.ipython import panel
        except ImportError:
            return
        panel.install(shell)


def unload(shell: Any) -> None:
    if getattr(shell, "kernel", None) is not None:
        try:
            from remote_kernel.ipython import panel

            panel.uninstall(shell)
        except ImportError:
            pass
    terminal.uninstall(shell)
    routing.uninstall(shell)
    loop.uninstall(shell)
    if _group_member in PROCESS_HOOKS.resolvers:
        PROCESS_HOOKS.resolvers.remove(_group_member)
    tracebacks.restore_syntax_error(shell)
    tracebacks.restore_groups(shell)
    variables.uninstall(shell)
    inspection.uninstall(shell)
    completion.uninstall(shell)
    display.uninstall(shell)
    magics = shell.magics_manager.magics
    magics["line"].pop("remote", None)
    magics["cell"].pop("remote", None)
    dask = sys.modules.get("remote_kernel.ipython.dask")  # issue 27: its groups end here
    if dask is not None:
        dask.close_all()
    reset_registry()


__all__ = ["get_registry", "load", "unload"]

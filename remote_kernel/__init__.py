"""remote_kernel: live Python objects on other machines, used from Jupyter as if local.

    import remote_kernel as rk
    conn = rk.connect("lab")            # a name written by `remote-kernel serve --name lab`
    conn.modules.os.getpid()
"""

from __future__ import annotations

from typing import Any

from remote_kernel.api import async_, deliver, obtain
from remote_kernel.client import (
    connect,
    connect_file,
    connect_ssh,
    connect_subprocess,
    connect_unix,
)
from remote_kernel.connection import AsyncResult, BgServingThread, Connection
from remote_kernel.errors import (
    AccessDenied,
    AuthenticationError,
    ConnectionClosed,
    ProtocolError,
    RemoteError,
    RemoteKernelError,
    RequestTimeout,
)
from remote_kernel.netref import BaseNetref, is_netref
from remote_kernel.server import Server, ThreadedServer
from remote_kernel.service import ClassicService, Service, VoidService, exposed

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AsyncResult",
    "AuthenticationError",
    "BaseNetref",
    "BgServingThread",
    "ClassicService",
    "Connection",
    "ConnectionClosed",
    "ProtocolError",
    "RemoteError",
    "RemoteKernelError",
    "RequestTimeout",
    "Server",
    "Service",
    "ThreadedServer",
    "VoidService",
    "__version__",
    "async_",
    "connect",
    "connect_file",
    "connect_ssh",
    "connect_subprocess",
    "connect_unix",
    "deliver",
    "exposed",
    "is_netref",
    "load_ipython_extension",
    "obtain",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext remote_kernel``: the magics, display, completion, inspection hooks."""
    from remote_kernel.ipython import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from remote_kernel.ipython import unload

    unload(ipython)

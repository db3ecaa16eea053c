"""remote_kernel: live Python objects on other machines, used from Jupyter as if local.

    import remote_kernel as rk
    conn = rk.connect("lab")            # a name written by `remote-kernel serve --name lab`
    conn.modules.os.getpid()

The public names below are resolved lazily (PEP 562): ``import remote_kernel`` loads nothing
but this file, and importing one layer (``remote_kernel.protocol``) never loads the layers
above it, so a server on a small board needs neither IPython nor numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "AccessDenied": "remote_kernel.errors",
    "AuthenticationError": "remote_kernel.errors",
    "ConnectionClosed": "remote_kernel.errors",
    "GroupError": "remote_kernel.errors",
    "ProtocolError": "remote_kernel.errors",
    "RemoteError": "remote_kernel.errors",
    "RemoteKernelError": "remote_kernel.errors",
    "RequestTimeout": "remote_kernel.errors",
    "AsyncResult": "remote_kernel.core.asyncresult",
    "BgServingThread": "remote_kernel.core.serving",
    "Connection": "remote_kernel.core.connection",
    "BaseNetref": "remote_kernel.core.netref",
    "is_netref": "remote_kernel.core.netref",
    "ClassicService": "remote_kernel.core.service",
    "Service": "remote_kernel.core.service",
    "VoidService": "remote_kernel.core.service",
    "exposed": "remote_kernel.core.service",
    "async_": "remote_kernel.core.api",
    "batch": "remote_kernel.core.api",
    "Batch": "remote_kernel.core.api",
    "deliver": "remote_kernel.core.api",
    "obtain": "remote_kernel.core.api",
    "connect": "remote_kernel.net.targets",
    "connect_file": "remote_kernel.net.client",
    "connect_ssh": "remote_kernel.net.client",
    "connect_subprocess": "remote_kernel.net.client",
    "connect_unix": "remote_kernel.net.client",
    "Group": "remote_kernel.net.group",
    "Server": "remote_kernel.net.server",
    "ThreadedServer": "remote_kernel.net.server",
    "discover": "remote_kernel.net.discovery",
    "ServerInfo": "remote_kernel.net.dnssd",
    "DiscoveryError": "remote_kernel.net.dnssd",
}

__all__ = [
    "AccessDenied",
    "AsyncResult",
    "AuthenticationError",
    "BaseNetref",
    "Batch",
    "BgServingThread",
    "ClassicService",
    "Connection",
    "ConnectionClosed",
    "DiscoveryError",
    "Group",
    "GroupError",
    "ProtocolError",
    "RemoteError",
    "RemoteKernelError",
    "RequestTimeout",
    "ServerInfo",
    "Server",
    "Service",
    "ThreadedServer",
    "VoidService",
    "__version__",
    "async_",
    "batch",
    "connect",
    "connect_file",
    "connect_ssh",
    "connect_subprocess",
    "connect_unix",
    "deliver",
    "discover",
    "exposed",
    "is_netref",
    "load_ipython_extension",
    "obtain",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'remote_kernel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return list(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext remote_kernel``: the magics, display, completion, inspection hooks."""
    from remote_kernel.ipython import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from remote_kernel.ipython import unload

    unload(ipython)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from remote_kernel.core.api import Batch, async_, batch, deliver, obtain
    from remote_kernel.core.asyncresult import AsyncResult
    from remote_kernel.core.connection import Connection
    from remote_kernel.core.netref import BaseNetref, is_netref
    from remote_kernel.core.service import ClassicService, Service, VoidService, exposed
    from remote_kernel.core.serving import BgServingThread
    from remote_kernel.errors import (
        AccessDenied,
        AuthenticationError,
        ConnectionClosed,
        GroupError,
        ProtocolError,
        RemoteError,
        RemoteKernelError,
        RequestTimeout,
    )
    from remote_kernel.net.client import (
        connect_file,
        connect_ssh,
        connect_subprocess,
        connect_unix,
    )
    from remote_kernel.net.discovery import discover
    from remote_kernel.net.dnssd import DiscoveryError, ServerInfo
    from remote_kernel.net.group import Group
    from remote_kernel.net.server import Server, ThreadedServer
    from remote_kernel.net.targets import connect

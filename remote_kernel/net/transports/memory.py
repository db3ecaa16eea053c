"""An in-memory transport pair (a socketpair), for tests that need no network."""

from __future__ import annotations

import socket

from remote_kernel.net.transports.sockets import SocketTransport


def memory_pair(name_a: str = "memory:a", name_b: str = "memory:b") -> tuple[SocketTransport,
                                                                              SocketTransport]:
    """Two connected transports; ``a`` names its peer ``name_b`` and vice versa."""
    left, right = socket.socketpair()
    return SocketTransport(left, name_b), SocketTransport(right, name_a)

"""Byte transports: TCP (+TLS), unix sockets, pipes (stdio, subprocess, ssh), in-memory pairs.

Each implements :class:`remote_kernel.core.transport.Transport`: it moves bytes and knows its
peer's name; framing is the protocol's, everything above it the connection's.
"""

from remote_kernel.core.transport import FrameReader, Transport
from remote_kernel.net.transports.memory import memory_pair
from remote_kernel.net.transports.pipes import PipeTransport
from remote_kernel.net.transports.sockets import SocketTransport

__all__ = ["FrameReader", "PipeTransport", "SocketTransport", "Transport", "memory_pair"]

"""Byte transports: TCP (+TLS), unix sockets, pipes (stdio, subprocess, ssh), in-memory pairs.

A transport moves bytes and knows its peer's name; framing is :class:`FrameReader`'s job and
everything above it is the connection's.
"""

from remote_kernel.transports.base import FrameReader, Transport
from remote_kernel.transports.memory import memory_pair
from remote_kernel.transports.pipes import PipeTransport
from remote_kernel.transports.sockets import SocketTransport

__all__ = ["FrameReader", "PipeTransport", "SocketTransport", "Transport", "memory_pair"]

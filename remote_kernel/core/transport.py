"""The transport interface a :class:`Connection` runs over, and the frame reader on top of it.

A transport moves bytes and knows its peer's name (``remote_kernel.net.transports`` has the
real ones); framing is the protocol's :class:`~remote_kernel.protocol.codec.FrameDecoder`,
the same code the fuzzer and the codec properties exercise.
"""

from __future__ import annotations

import abc

from remote_kernel.protocol.codec import CHUNK, FrameDecoder


class Transport(abc.ABC):
    """A bidirectional byte stream to one peer."""

    peer_name: str = "peer"

    @abc.abstractmethod
    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; raise ConnectionClosed when the peer is gone."""

    @abc.abstractmethod
    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        """Read at least one byte into ``buffer``; 0 on timeout; ConnectionClosed on EOF."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def fileno(self) -> int:
        """A descriptor that becomes readable when data arrives (for event loops)."""

    def has_buffered_data(self) -> bool:
        """Bytes already read from the OS but not yet returned (TLS records)."""
        return False


class FrameReader:
    """Reads frames from a transport straight into the decoder's buffer (no extra copy)."""

    def __init__(self, transport: Transport, max_message_size: int, chunk: int = CHUNK) -> None:
        self.transport = transport
        self.decoder = FrameDecoder(max_message_size, chunk)

    @property
    def max_message_size(self) -> int:
        return self.decoder.max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self.decoder.max_message_size = value

    def buffered(self) -> bool:
        """True when a complete frame may be available without reading the transport."""
        return self.decoder.buffered() or self.transport.has_buffered_data()

    def read_frame(self, timeout: float | None) -> bytes | bytearray | None:
        """The next frame's payload, or None when nothing complete arrived in ``timeout``."""
        decoder = self.decoder
        while True:
            payload = decoder.next_frame()
            if payload is not None:
                return payload
            with decoder.recv_buffer() as view:
                got = self.transport.recv_into(view, timeout)
            if got == 0:
                return None
            decoder.advance(got)

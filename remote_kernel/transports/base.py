"""The transport interface and the frame reader shared by every stream transport."""

from __future__ import annotations

import abc

from remote_kernel.protocol.codec import HEADER, HEADER_SIZE, check_length

CHUNK = 256 * 1024
BIG_START = 1 << 20  # first allocation for a frame larger than CHUNK


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
    """Reads length-prefixed frames from a transport.

    Small frames are parsed out of one reusable buffer (several per read); a frame larger
    than the buffer is received straight into its own preallocated bytearray. State survives
    a timeout or a KeyboardInterrupt between reads, so no byte is ever lost or repeated.
    """

    def __init__(self, transport: Transport, max_message_size: int) -> None:
        self.transport = transport
        self.max_message_size = max_message_size
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._need: int | None = None
        self._big: bytearray | None = None
        self._big_got = 0

    def buffered(self) -> bool:
        """True when a complete frame may be available without reading the transport."""
        return self._end - self._start >= HEADER_SIZE or self.transport.has_buffered_data()

    def read_frame(self, timeout: float | None) -> bytes | bytearray | None:
        """The next frame's payload, or None when nothing complete arrived in ``timeout``."""
        while True:
            frame = self._take()
            if frame is not None:
                return frame
            if self._big is not None:
                big = self._big
                if self._big_got == len(big):
                    # The first BIG_START bytes arrived: now the frame gets its full size,
                    # once. A peer that announces a huge frame and sends little costs little.
                    full = bytearray(self._need or 0)
                    full[:self._big_got] = big
                    self._big = big = full
                with memoryview(big) as whole, whole[self._big_got:] as view:
                    got = self.transport.recv_into(view, timeout)
                if got == 0:
                    return None
                self._big_got += got
                if self._big_got == self._need:
                    frame, self._big, self._need = big, None, None
                    return frame
                continue
            if self._end == len(self._buf):
                self._compact()
            got = self.transport.recv_into(self._view[self._end:], timeout)
            if got == 0:
                return None
            self._end += got

    def _take(self) -> bytes | None:
        if self._big is not None:
            return None  # a large frame is being received into its own buffer
        available = self._end - self._start
        if self._need is None:
            if available < HEADER_SIZE:
                return None
            self._need = check_length(HEADER.unpack_from(self._buf, self._start)[0],
                                      self.max_message_size)
            self._start += HEADER_SIZE
            available -= HEADER_SIZE
        need = self._need
        if available >= need:
            frame = bytes(self._view[self._start:self._start + need])
            self._start += need
            self._need = None
            if self._start == self._end:
                self._start = self._end = 0
            return frame
        if need > len(self._buf) - self._start:
            if need > len(self._buf):
                # Too big for the shared buffer: receive it into its own allocation,
                # which starts small and grows with the bytes that arrive.
                self._big = bytearray(min(need, max(available, BIG_START)))
                self._big[:available] = self._view[self._start:self._end]
                self._big_got = available
                self._start = self._end = 0
            else:
                self._compact()
        return None

    def _compact(self) -> None:
        remaining = self._end - self._start
        self._buf[:remaining] = self._buf[self._start:self._end]
        self._start, self._end = 0, remaining

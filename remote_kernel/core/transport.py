"""The transport interface a :class:`Connection` runs over, and the frame reader on top of it.

A transport moves bytes and knows its peer's name (``remote_kernel.net.transports`` has the
real ones); framing is the protocol's :class:`~remote_kernel.protocol.codec.FrameDecoder`,
the same code the fuzzer and the codec properties exercise.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from typing import Any

from remote_kernel.errors import ConnectionClosed
from remote_kernel.protocol.codec import CHUNK, FrameAuthenticator, FrameDecoder
from remote_kernel.protocol.landing import Landing

# A send that makes no progress for this long means the peer stopped reading: the
# connection is dropped (its stream is cut mid-frame and cannot be used again).
SEND_TIMEOUT = 30.0


class PeerClosed(ConnectionClosed):
    """The peer closed its end in order (end of stream): its process ended or it closed
    the connection, as opposed to a link that failed."""

    orderly = True


class StopMidRead(KeyboardInterrupt):
    """A Stop (KeyboardInterrupt) landed just after a transport took bytes from the system
    and before it could say how many: they are lost to this side, so the stream cannot go
    on as it is. A session resumes (the peer sends them again, net/session.py); any other
    connection closes."""


class Transport(abc.ABC):
    """A bidirectional byte stream to one peer."""

    peer_name: str = "peer"
    send_timeout: float = SEND_TIMEOUT

    @abc.abstractmethod
    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send all of ``data``; raise ConnectionClosed when the peer is gone, when the
        transport is closed meanwhile (from another thread too), or when no byte could be
        sent for ``timeout`` seconds (default :attr:`send_timeout`; 0: only what fits now)."""

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
    """Reads frames from a transport straight into the decoder's buffer (no extra copy).

    After a handshake it also carries what that handshake agreed for the connection: the
    session (``session``, see net/auth.py) and the frame authenticators of both directions
    (``send_auth`` for the frames this side sends; the decoder checks those it receives)."""

    def __init__(self, transport: Transport, max_message_size: int, chunk: int = CHUNK) -> None:
        self.transport = transport
        self.decoder = FrameDecoder(max_message_size, chunk)
        self.send_auth: FrameAuthenticator | None = None
        self.session: Any = None

    def authenticate(self, send: FrameAuthenticator, receive: FrameAuthenticator) -> None:
        """Every frame from now on is tagged (sent) and checked (received)."""
        self.send_auth = send
        self.decoder.authenticator = receive

    @property
    def max_message_size(self) -> int:
        return self.decoder.max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self.decoder.max_message_size = value

    def buffered(self) -> bool:
        """True when a complete frame may be available without reading the transport."""
        return self.decoder.buffered() or self.transport.has_buffered_data()

    def resize(self, chunk: int) -> None:
        """A new size for the receive buffer (see FrameDecoder.resize)."""
        self.decoder.resize(chunk)

    def expect(self, as_bytes: Iterable[int | Landing]) -> None:
        """What the next frames become: bytes values, writable buffers, or memory offered
        for them to land in (see FrameDecoder.expect)."""
        self.decoder.expect(as_bytes)

    def read_frame(self, timeout: float | None) -> bytes | bytearray | None:
        """The next frame's payload, or None when none is complete ``timeout`` seconds after
        the call (None: wait as long as it takes). The deadline is absolute: bytes that
        trickle in do not extend it (past it, only bytes already received by the system are
        taken), and a partial frame stays buffered for the next call."""
        decoder = self.decoder
        payload = decoder.next_frame()
        if payload is not None:
            return payload
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = timeout
        recv_into = self.transport.recv_into
        got = 0
        try:
            while True:
                with decoder.recv_buffer() as view:
                    got = recv_into(view, wait)
                if got:
                    decoder.advance(got)
                    got = 0
                    payload = decoder.next_frame()
                    if payload is not None:
                        return payload
                elif wait == 0:
                    return None
                if deadline is not None:
                    # Past the deadline only bytes already there are taken (no more waiting).
                    wait = max(0.0, deadline - time.monotonic())
        except KeyboardInterrupt:
            # A Stop between the transport's answer and the decoder's count: the bytes are
            # in the buffer and counted received (a session's count): the decoder takes them.
            if got:
                decoder.advance(got)
            raise

"""What one side of a session sent and the peer has not acknowledged (net/session.py).

Kept by stream offset: views of bytes that cannot change, copies of buffers that could (up
to the bound). Past ``RESEND_LIMIT`` the oldest bytes are let go; a resume that would need
them then fails cleanly instead of resuming wrongly.
"""

from __future__ import annotations

import collections

from remote_kernel.errors import ProtocolError
from remote_kernel.protocol import uninit

RESEND_LIMIT = 64 << 20  # bytes kept for re-sending before the oldest are let go


class ResendStore:
    """What this side sent and the peer has not acknowledged, by stream offset."""

    __slots__ = ("_parts", "start", "end", "limit", "peer_acked")

    def __init__(self, limit: int = RESEND_LIMIT) -> None:
        self._parts: collections.deque[bytes | memoryview] = collections.deque()
        self.start = 0  # stream offset of the first byte kept
        self.end = 0  # bytes sent in all
        self.limit = limit
        self.peer_acked = 0  # the peer's last acknowledgement, let go at the next add

    def note_ack(self, offset: int) -> None:
        """The peer says it received ``offset`` bytes. Only noted (any thread may call
        this); what it frees is let go by the next add, in the sending thread."""
        if offset > self.end or offset < 0:
            raise ProtocolError(f"the peer acknowledged {offset} bytes of {self.end} sent")
        if offset > self.peer_acked:
            self.peer_acked = offset

    @property
    def kept(self) -> int:
        return self.end - self.start

    @property
    def last(self) -> bytes | memoryview | None:
        """The part added last (None: none kept)."""
        return self._parts[-1] if self._parts else None

    def add(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is bytes:  # immutable: kept as it is (the hot path)
            # The count, then the part, with no call between them that a Stop could land
            # at (a call's return is where it lands): kept whole or not at all.
            self.end += len(data)
            self._parts.append(data)
        else:
            self._add_buffer(data)
        if self.end - self.start > self.limit or self.peer_acked > self.start:
            self._let_go()

    def _add_buffer(self, data: bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        # Bytes that may change after the send (a user's array) are copied, up to the
        # bound; an immutable buffer is kept as a view.
        part = view if view.readonly or view.nbytes > self.limit else \
            uninit.copy_bytes(view)
        self._parts.append(part)
        self.end += view.nbytes

    def acknowledge(self, offset: int) -> None:
        """The peer received everything before ``offset``."""
        if offset <= self.start:
            return
        if offset > self.end:
            raise ProtocolError(f"the peer acknowledged {offset} bytes of {self.end} sent")
        parts = self._parts
        while parts and offset > self.start:
            first = parts[0]
            size = len(first) if type(first) is bytes else first.nbytes
            if self.start + size <= offset:
                parts.popleft()
                self.start += size
            else:
                parts[0] = memoryview(first)[offset - self.start:]
                self.start = offset

    def clear(self) -> None:
        """Let everything go (the session ended)."""
        self._parts.clear()
        self.start = self.end

    def since(self, offset: int) -> list[bytes | memoryview] | None:
        """What to re-send to a peer that received ``offset`` bytes; None if part of it
        was let go (or the offset is not one this side ever reached)."""
        if offset < self.start or offset > self.end:
            return None
        self.acknowledge(offset)
        return list(self._parts)

    def _let_go(self) -> None:
        """What the peer acknowledged, then (past the bound) the oldest bytes: a resume
        that needs those fails cleanly (since())."""
        self.acknowledge(self.peer_acked)
        parts = self._parts
        while self.end - self.start > self.limit and len(parts) > 1:
            first = parts.popleft()
            self.start += len(first) if type(first) is bytes else first.nbytes


__all__ = ["RESEND_LIMIT", "ResendStore"]

"""Framing and msgpack encoding.

Wire format, byte by byte:

    frame   := length:uint32 big-endian | payload[length] | tag[16]
    payload := one msgpack object (see messages.py for the message arrays; boxing.py for
               the ext types of values)
    tag     := present only after a handshake with a token (wire revision 2, net/auth.py):
               keyed BLAKE2b-128 with the direction's frame key over
               counter:uint64 big-endian | length:uint32 big-endian | payload

The counter is implicit: each direction counts its frames from 0 after the handshake, so
a dropped, replayed, reordered or injected frame fails its tag. A frame whose tag fails
closes the connection with ``ProtocolError("frame failed authentication")``; it is never
decoded. ``length`` counts the payload only. Without a token there is no tag.

The length is checked against ``max_message_size`` as soon as the 4 header bytes are in,
before a byte of the payload is buffered. Malformed input raises :class:`ProtocolError`.
Arrays decode as tuples, maps as dicts (keys may be any hashable value).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque
from collections.abc import Callable, Iterable
from sys import getsizeof
from typing import Any

import msgpack

from remote_kernel.errors import ProtocolError
from remote_kernel.protocol import uninit
from remote_kernel.protocol.landing import Landing

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_FRAME = 2**32 - 1

ExtHook = Callable[[int, bytes], Any]


TAG_SIZE = 16
_COUNTED_HEADER = struct.Struct(">QI")  # frame counter, then the frame's header


class FrameAuthenticator:
    """Tags the frames of one direction of a session, or checks them (wire revision 2).

    The keyed hasher is made once and copied per frame (cheaper than keying each one)."""

    __slots__ = ("_keyed", "count", "last_sealed")

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(key=key, digest_size=TAG_SIZE)
        self.count = 0  # frames tagged or checked so far
        # The last frame seal() made: counted, so it must reach the peer (a Stop that lands
        # before it is handed to the link leaves it to net/session.py to send).
        self.last_sealed: bytes | None = None

    def _tag_of(self, length: int, payload: bytes | bytearray | memoryview) -> bytes:
        hasher = self._keyed.copy()
        hasher.update(_COUNTED_HEADER.pack(self.count, length))
        hasher.update(payload)
        return hasher.digest()

    def tag(self, length: int, payload: bytes | bytearray | memoryview) -> bytes:
        """The tag of the next frame sent (counts it); ``payload`` is read, never copied."""
        tag = self._tag_of(length, payload)
        self.count += 1
        return tag

    def seal(self, payload: bytes) -> bytes:
        """The next frame, whole: header, payload, tag."""
        length = len(payload)
        sealed = HEADER.pack(length) + payload + self._tag_of(length, payload)
        # Counted and recorded together, with no call between (a Stop lands at calls).
        self.count += 1
        self.last_sealed = sealed
        return sealed

    def check(self, length: int, payload: bytes | bytearray | memoryview,
              tag: bytes | bytearray | memoryview) -> None:
        """Raises ProtocolError unless ``tag`` is the next frame's tag for ``payload``.
        Counts nothing: the decoder counts the frame (``count += 1``) as it takes it, in
        the same few statements, with no call between that a Stop (KeyboardInterrupt
        raised at any bytecode of the reading thread) could land in — so an interrupted
        read leaves the decoder and the counter as they were, and reads the frame again."""
        if not hmac.compare_digest(self._tag_of(length, payload), tag):
            raise ProtocolError("frame failed authentication")


def check_length(length: int, max_message_size: int) -> int:
    if length > max_message_size:
        raise ProtocolError(
            f"frame of {length} bytes exceeds max_message_size ({max_message_size} bytes)"
        )
    return length


def parse_header(header: bytes | bytearray | memoryview, max_message_size: int) -> int:
    """The payload length announced by a 4-byte header; refuses oversized frames."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    (length,) = HEADER.unpack(header)
    return check_length(length, max_message_size)


def frame(payload: bytes, max_message_size: int) -> bytes:
    """Prefix ``payload`` with its length; refuses to build an oversized frame."""
    if len(payload) > min(max_message_size, MAX_FRAME):
        raise ProtocolError(
            f"message of {len(payload)} bytes exceeds max_message_size "
            f"({max_message_size} bytes); not sent"
        )
    return HEADER.pack(len(payload)) + payload


def pack(obj: Any) -> bytes:
    """msgpack-encode already boxed data (see boxing.Boxer)."""
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode message: {exc}") from exc


class DecodeBudget:
    """What one message may decode to, charged as its values are built: at every step, the
    bytes of memory built so far at most ``factor`` times the bytes of the message they came
    from (``seen``: at most its ``size``) plus ``slack``, and at most ``max_items`` items
    (array elements, map keys and values). Checking as it goes, not once at the end, stops
    a message of costly values after its first few: its decoding costs little time too.

    Arrays and maps are charged by the hooks below, as msgpack completes each (each of
    their items is seen as one byte, at least what it took); the ext values by the decoder
    that builds them (unboxing.py), with :meth:`charge`, before they are built. Past a
    bound, decoding stops with a ProtocolError."""

    __slots__ = ("copies", "factor", "items", "max_items", "seen", "size", "slack", "used")

    def __init__(self, size: int, factor: int, slack: int, max_items: int) -> None:
        self.size = size  # the bytes the message arrived as (payload and buffers)
        self.factor = factor
        self.slack = slack
        self.max_items = max_items
        self.used = 0  # bytes of values built
        self.seen = 0  # bytes of the message they came from
        self.items = 0
        # The copies msgpack makes of the ext values being decoded, one in another: at
        # most MAX_COPIES times the message (a legitimate one nests a few levels).
        self.copies = 0

    def charge(self, cost: int, seen: int) -> None:
        """``cost`` bytes more built, from ``seen`` more bytes of the message."""
        self.used += cost
        self.seen += seen
        if self.used > self.factor * min(self.seen, self.size) + self.slack \
                or self.copies > MAX_COPIES * self.size + self.slack:
            self.over()

    def over(self) -> None:
        if self.items > self.max_items:
            raise ProtocolError(f"a message may hold at most {self.max_items} items")
        if self.copies > MAX_COPIES * self.size + self.slack:
            raise ProtocolError("a message's ext values nest too many large copies")
        raise ProtocolError(f"a message of {self.size} bytes may decode to at most "
                            f"{self.factor} times its size in values (past "
                            f"{self.used} bytes from {min(self.seen, self.size)})")

    def array(self, items: tuple) -> tuple:
        count = len(items)
        self.items += count
        # The empty tuple is shared: it costs nothing.
        self.used += TUPLE_SIZE + 8 * count if count else 0
        self.seen += count
        if self.used > self.factor * min(self.seen, self.size) + self.slack \
                or self.items > self.max_items:
            self.over()
        return items

    def map(self, mapping: dict) -> dict:
        count = 2 * len(mapping)
        self.items += count
        self.used += getsizeof(mapping)
        self.seen += count
        if self.used > self.factor * min(self.seen, self.size) + self.slack \
                or self.items > self.max_items:
            self.over()
        return mapping


TUPLE_SIZE = getsizeof(())  # a tuple's header; 8 bytes more per item
MAX_COPIES = 4


def unpack(payload: bytes | bytearray | memoryview, ext_hook: ExtHook | None = None,
           budget: DecodeBudget | None = None) -> Any:
    """Decode one msgpack object; anything malformed raises ProtocolError. With a
    ``budget``, its arrays and maps are charged to it as they are decoded."""
    try:
        if ext_hook is None:
            return msgpack.unpackb(
                payload, use_list=False, raw=False, strict_map_key=False
            )
        if budget is None:
            return msgpack.unpackb(
                payload, use_list=False, raw=False, strict_map_key=True, ext_hook=ext_hook
            )
        return msgpack.unpackb(
            payload, use_list=False, raw=False, strict_map_key=True, ext_hook=ext_hook,
            list_hook=budget.array, object_hook=budget.map,
            # An array is charged once complete; before, its header allocates 8 bytes an
            # item, at most one item a byte of the message.
            max_array_len=min(budget.max_items, budget.size),
            max_map_len=min(budget.max_items // 2, budget.size // 2),
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError,
            UnicodeDecodeError, RecursionError, msgpack.ExtraData,
            msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"malformed message: {type(exc).__name__}: {exc}") from exc


CHUNK = 256 * 1024  # the shared receive buffer; several small frames are parsed per read
BIG_START = 1 << 20  # first allocation for a frame larger than the shared buffer


class FrameDecoder:
    """The one framer: splits a byte stream into frame payloads, without doing any I/O.

    Two ways in, one state machine: ``feed(data)`` copies bytes in and returns the complete
    payloads (tests, the fuzzer), while a transport receives straight into
    :meth:`recv_buffer` and reports the count with :meth:`advance`, then takes payloads with
    :meth:`next_frame` (no copy of the stream on the way in).

    Small frames are parsed out of one reusable buffer; a frame larger than that buffer is
    received into its own allocation, which starts at ``BIG_START`` bytes and gets its full
    size only once that much has arrived, so a peer announcing a huge frame and sending
    little costs little. The size of a frame is checked when its header arrives, before a
    byte of its payload is buffered. State survives any interruption between calls.

    With an :attr:`authenticator` (wire revision 2, set after a handshake with a token),
    every frame is followed by its tag, checked before the frame is returned: a small one
    when it is complete, a large one after its last byte landed (its tag is received into
    a buffer of its own, never into the frame's memory).

    :meth:`expect` says which of the next frames become ``bytes`` values: such a large
    frame is received straight into an uninitialised ``bytes`` object (see uninit.py) and
    returned as it is; any other large frame comes as a ``bytearray``, writable. A frame
    may also land in memory a caller offered (a :class:`~.landing.Landing`): the decoder
    holds the offer, so its owner, until the frame ends, and once the offer is withdrawn
    the rest of the frame drains into the shared buffer (free while a large frame is
    received) and the frame comes out empty.
    """

    def __init__(self, max_message_size: int, chunk: int = CHUNK) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray(chunk)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._need: int | None = None
        self._big: bytes | bytearray | None = None
        self._big_view: memoryview | None = None  # where the large frame's bytes go
        self._big_got = 0
        self._landing: Landing | None = None  # the offer the large frame lands in, if any
        # Per coming frame: true if it becomes bytes, or an offer for it to land in.
        self._kinds: deque[int | Landing] = deque()
        self._as_bytes: int | Landing = 0  # the kind of the frame parsed last
        # Wire revision 2: the tags of this direction's frames (None: frames carry none).
        self.authenticator: FrameAuthenticator | None = None
        self._frame_tag = 0  # tag bytes that follow the frame being parsed
        self._tag = bytearray(TAG_SIZE)  # a large frame's tag lands here
        self._tag_got = 0

    def expect(self, as_bytes: Iterable[int | Landing]) -> None:
        """The kinds of the next frames, in order: true for a frame that becomes a
        ``bytes`` value, false for a writable buffer (what unannounced frames are), or a
        :class:`Landing` for a large frame to land in when it has exactly that size
        (returned then as the landing's view; else it becomes bytes)."""
        self._kinds.extend(as_bytes)

    # -- receiving in place --------------------------------------------------------------

    def recv_buffer(self) -> memoryview:
        """Where the next received bytes go; call :meth:`advance` with how many arrived."""
        if self._big is not None:
            if self._big_got == self._need:  # (only with a tag:) the frame is in, its tag next
                return memoryview(self._tag)[self._tag_got:]
            if self._landing is not None and self._landing.withdrawn:
                return self._drain()
            if self._big_got == len(self._big):
                self._grow_big()
            return self._big_view[self._big_got:]
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end:]

    def advance(self, count: int) -> None:
        """``count`` bytes were written at the start of the last :meth:`recv_buffer`."""
        if self._big is not None:
            if self._big_got == self._need:
                self._tag_got += count
            else:
                self._big_got += count
        else:
            self._end += count

    def next_frame(self) -> bytes | bytearray | None:
        """The next complete payload, or None until more bytes arrive."""
        big = self._big
        if big is not None:
            if self._big_got != self._need or self._tag_got != self._frame_tag:
                return None
            view, length, landing = self._big_view, self._need, self._landing
            drained = landing is not None and landing.withdrawn
            if self._frame_tag and not drained:
                self.authenticator.check(length, view, self._tag)  # type: ignore[union-attr]
            # Taken: the frame and its count change together, with no call between (a Stop
            # can land at any call; see FrameAuthenticator.check). A drained frame's bytes
            # went to scratch and nobody reads them: it is counted all the same, so the
            # next frame's tag still binds the order.
            if self._frame_tag:
                self.authenticator.count += 1  # type: ignore[union-attr]
            self._landing = None  # the frame ends: its offer is let go
            self._big = self._big_view = self._need = None
            self._tag_got = 0
            if landing is None:
                view.release()  # nothing writes into it any more
            if drained:
                return b""  # its reader gave up: the reply is dropped, the data with it
            return big
        start, end, need = self._start, self._end, self._need
        if need is None:
            if end - start < HEADER_SIZE:
                return None
            need = HEADER.unpack_from(self._buf, start)[0]
            if need > self.max_message_size:
                self._start = self._end = 0  # the stream is unusable; keep nothing of it
                self._kinds.clear()
                check_length(need, self.max_message_size)  # raises
            self._as_bytes = self._kinds.popleft() if self._kinds else 0
            self._frame_tag = 0 if self.authenticator is None else TAG_SIZE
            start += HEADER_SIZE
            self._start, self._need = start, need
        available = end - start
        tag = self._frame_tag
        if available >= need + tag:
            stop = start + need
            payload = bytes(self._view[start:stop])
            if tag:
                self.authenticator.check(  # type: ignore[union-attr]
                    need, payload, self._buf[stop:stop + tag])
                stop += tag
                self.authenticator.count += 1  # type: ignore[union-attr]  (taken, below)
            self._need = None
            if stop == end:
                self._start = self._end = 0
            else:
                self._start = stop
            return payload
        if need + tag > len(self._buf) - self._start:
            if need + tag > len(self._buf):
                # Too big for the shared buffer: receive it into its own allocation.
                first = self._new_big(min(need, max(available, BIG_START)))
                got = min(available, need)  # (more: the start of its tag)
                first[:got] = self._view[self._start:self._start + got]
                self._tag[:available - got] = self._view[self._start + got:self._end]
                self._big_got, self._tag_got = got, available - got
                self._start = self._end = 0
            else:
                self._compact()
        return None

    def buffered(self) -> bool:
        """True when a complete frame may be available without receiving more bytes."""
        if self._big is not None:
            return self._big_got == self._need and self._tag_got == self._frame_tag
        return self._end - self._start >= HEADER_SIZE

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a frame."""
        if self._big is not None:
            return self._big_got + HEADER_SIZE + self._tag_got
        return self._end - self._start + (HEADER_SIZE if self._need is not None else 0)

    def take_unparsed(self) -> bytes:
        """Every byte received and not yet returned as a frame, taken out as it came on
        the wire (header included): a handshake hands them to the stream that follows it
        (see net/session.py). Only for a decoder without an authenticator."""
        if self._big is not None:
            got = bytes(self._big_view[:self._big_got])
            head = HEADER.pack(self._need or 0)
            self._big = self._big_view = None
        else:
            got = bytes(self._view[self._start:self._end])
            head = HEADER.pack(self._need) if self._need is not None else b""
        self._start = self._end = self._big_got = 0
        self._need = None
        return head + got

    # -- feeding copies ------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        """Copy ``data`` in; the payloads it completes, in order."""
        frames: list[bytes | bytearray] = []
        with memoryview(data) as whole, whole.cast("B") as view:
            offset = 0
            while True:
                while (payload := self.next_frame()) is not None:
                    frames.append(payload)
                if offset == len(view):
                    return frames
                with self.recv_buffer() as target:
                    count = min(len(target), len(view) - offset)
                    target[:count] = view[offset:offset + count]
                self.advance(count)
                offset += count

    def resize(self, chunk: int) -> None:
        """Give the shared buffer a new size, keeping what it holds (the handshake reads
        with a small buffer; the connection proper with a large one)."""
        if chunk == len(self._buf):
            return
        held = self._buf[self._start:self._end]
        if len(held) > chunk:
            raise ValueError("the new buffer cannot hold the bytes already received")
        self._buf = bytearray(chunk)
        self._buf[:len(held)] = held
        self._view = memoryview(self._buf)
        self._start, self._end = 0, len(held)

    def _new_big(self, size: int) -> memoryview:
        """A buffer of ``size`` bytes for the large frame, and a writable view of it: its
        final ``bytes`` object when it becomes bytes and ``size`` is its full size, else a
        bytearray; uninitialised where uninit.py can, zero-filled elsewhere. A landing view
        of the frame's exact size (see :meth:`expect`) is used as it is, and held."""
        as_bytes = self._as_bytes
        if type(as_bytes) is Landing:
            self._as_bytes = 1
            if as_bytes.withdrawn:  # whoever offered it gave up waiting: drain the frame
                self._landing = as_bytes
                self._big = self._big_view = self._view
                return self._view  # (the caller moves the bytes already in here: scratch)
            if as_bytes.size() == self._need:
                self._landing = as_bytes  # held (and its owner) until the frame ends
                self._big = self._big_view = as_bytes.view  # full size: no allocation
                return as_bytes.view
            as_bytes = 1  # any other size: it becomes bytes
        if as_bytes and size == self._need and size >= uninit.MIN_SIZE \
                and uninit.AVAILABLE:
            self._big, self._big_view = uninit.new_bytes(size)
        else:
            self._big = uninit.new_bytearray(size) if uninit.AVAILABLE else bytearray(size)
            self._big_view = memoryview(self._big)
        return self._big_view

    def _grow_big(self) -> None:
        """BIG_START bytes arrived: now the frame gets its full size, once."""
        got, old, old_view = self._big_got, self._big, self._big_view  # old owns old_view
        self._new_big(self._need or 0)[:got] = old_view
        old_view.release()
        del old

    def _drain(self) -> memoryview:
        """Scratch memory for the rest of a frame whose landing was withdrawn: the shared
        buffer (it holds nothing while a large frame is received), never past the frame."""
        return self._view[:min(len(self._buf), (self._need or 0) - self._big_got)]

    def _compact(self) -> None:
        remaining = self._end - self._start
        self._buf[:remaining] = self._buf[self._start:self._end]
        self._start, self._end = 0, remaining

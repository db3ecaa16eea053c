"""Framing and msgpack encoding.

Wire format, byte by byte:

    frame   := length:uint32 big-endian | payload[length]
    payload := one msgpack object (see messages.py for the message arrays; boxing.py for
               the ext types of values)

The length is checked against ``max_message_size`` as soon as the 4 header bytes are in,
before a byte of the payload is buffered. Malformed input raises :class:`ProtocolError`.
Arrays decode as tuples, maps as dicts (keys may be any hashable value).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from remote_kernel.errors import ProtocolError

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_FRAME = 2**32 - 1

ExtHook = Callable[[int, bytes], Any]


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


def unpack(payload: bytes | bytearray | memoryview, ext_hook: ExtHook | None = None) -> Any:
    """Decode one msgpack object; anything malformed raises ProtocolError."""
    try:
        if ext_hook is None:
            return msgpack.unpackb(
                payload, use_list=False, raw=False, strict_map_key=False
            )
        return msgpack.unpackb(
            payload, use_list=False, raw=False, strict_map_key=True, ext_hook=ext_hook
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError,
            UnicodeDecodeError, RecursionError, msgpack.ExtraData,
            msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"malformed message: {type(exc).__name__}: {exc}") from exc


class FrameDecoder:
    """Split a byte stream into frames. ``feed`` bytes, get the complete payloads back.

    The size of a frame is checked when its header arrives, so an oversized frame is
    refused before its payload is buffered.
    """

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self._buffer = bytearray()
        self._need: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buffer) < HEADER_SIZE:
                    return frames
                try:
                    self._need = parse_header(self._buffer[:HEADER_SIZE],
                                              self.max_message_size)
                except ProtocolError:
                    self._buffer.clear()  # the stream is unusable; keep nothing of it
                    raise
                del self._buffer[:HEADER_SIZE]
            if len(self._buffer) < self._need:
                return frames
            frames.append(bytes(self._buffer[: self._need]))
            del self._buffer[: self._need]
            self._need = None

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a frame."""
        return len(self._buffer) + (HEADER_SIZE if self._need is not None else 0)

"""Sending: one message out, all or nothing (see connection.py's theory of operation).

A message that cannot be encoded or is too large is not sent and leaves no trace: the
releases it would have carried stay queued, and what boxing changed is undone. Once bytes
have gone out, a send that fails cuts the stream mid-frame, so the connection is dropped.
Releases of dropped proxies are queued by ``__del__`` and go out as one batch in front of
the next message. Part of :class:`~remote_kernel.core.connection.Connection`.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import msgpack

from remote_kernel.config import ProtocolConfig
from remote_kernel.core.hooks import ConnectionHooks
from remote_kernel.core.stop_deferral import (
    DEFER_FROM,
    MessageCut,
    message_was_sent,
    stop_held_back,
)
from remote_kernel.core.transport import Transport
from remote_kernel.errors import ConnectionClosed, ProtocolError, mark_stop
from remote_kernel.protocol.boxing import MAX_VALUE_ITEMS, PASSTHROUGH, Boxer
from remote_kernel.protocol.codec import HEADER, frame, pack
from remote_kernel.protocol.messages import (
    EXCEPTION,
    INT_MAX,
    INT_MIN,
    REPLY,
    REQUEST,
    Kind,
    Op,
    buffers_header,
)

MAX_BUFFERS = 1024  # out-of-band buffers in one message
_get_ident = threading.get_ident


class Sending:
    """The sending half of a Connection: encoding under the send lock, framing (tagged
    under wire revision 2), out-of-band buffers, release batches and session ACKs."""

    _boxer: Boxer
    _config: ProtocolConfig
    _frame_limit: int  # the largest frame: min(max_message_size, MAX_FRAME)
    _transport: Transport
    _send_lock: threading.Lock
    _sender: int | None  # the thread encoding a message, under the lock
    _packer: msgpack.Packer
    _send_auth: Any  # net/auth.py's tagger, or None
    _session: Any
    _releases: collections.deque[tuple[int, int]]
    _proxies: dict
    _closed: bool
    _requests: int
    _releases_sent: int
    _messages_out: int
    _bytes_out: int
    _hooks: ConnectionHooks
    peer: str

    def _send_message(self, kind: int, seq: Any, op_or_value: Any, args: tuple | None) -> None:
        if self._closed:
            raise self._closed_error()
        boxer = self._boxer
        ident = _get_ident()
        if self._sender == ident:
            # Encoding a message ran code that asks the peer something (Python 3.12 looks
            # up ``dir(obj)`` of a netref to suggest names in an AttributeError's text):
            # waiting for our own send lock would hang; the caller's fallback applies.
            raise ProtocolError("a request cannot be made while a message is being encoded")
        with self._send_lock:
            self._sender = ident
            releases = self._take_releases() if self._releases else None
            boxer.begin()
            try:
                if kind == REQUEST:
                    body = [kind, seq, op_or_value]
                    box, append = boxer.box, body.append
                    # A request's arguments are objects, names and None: an int is rare
                    # here, so it takes box(), which returns it unchanged (the same bytes as
                    # plain(); tests/protocol/test_plain.py pins it) and spares every call
                    # the int test.
                    for arg in args:
                        append(arg if type(arg) in PASSTHROUGH else box(arg))
                elif kind == REPLY:
                    value = op_or_value  # plain(value), inlined
                    body = [kind, seq, value if type(value) in PASSTHROUGH or (
                        type(value) is int and INT_MIN <= value <= INT_MAX) else boxer.box(value)]
                elif kind == EXCEPTION:
                    body = [kind, seq, boxer.box_exception(op_or_value)]
                else:  # NOTIFY: seq is unused, op_or_value is the opcode
                    body = [kind, op_or_value, *map(boxer.box, args or ())]
                try:
                    payload = self._packer.pack(body)
                except (TypeError, ValueError, OverflowError) as exc:
                    self._packer.reset()
                    raise ProtocolError(f"cannot encode message: {exc}") from exc
                buffers = boxer.outgoing
                if buffers:
                    boxer.outgoing = []
                if boxer.items > MAX_VALUE_ITEMS:
                    raise ProtocolError(
                        f"a message may carry at most {MAX_VALUE_ITEMS} items by value, this "
                        f"one {boxer.items}; not sent (copy large data as a numpy array)")
                size = len(payload)
                if size > self._frame_limit:
                    frame(payload, self._config.max_message_size)  # refuses it
                if releases:
                    released = pack([Kind.NOTIFY, Op.DEL, releases])
                    if len(released) > self._frame_limit:
                        frame(released, self._config.max_message_size)  # refuses it
                else:
                    released = None
                views = self._checked_buffers(buffers, len(payload),
                                              self._config.max_message_size) if buffers \
                    else None
            except BaseException:
                # Not sent: leave no trace (see the theory of operation).
                self._sender = None
                boxer.rollback()
                if releases:
                    self._releases.extendleft(reversed(releases))
                raise
            self._sender = None
            # Frames are tagged in the order they are sent (each tag counts its frame).
            auth = self._send_auth
            try:
                head = None if released is None else self._framed(released)
                if views is None and size < DEFER_FROM:  # the hot path: one frame, one send
                    if head is not None:  # a send of its own: each send one whole frame
                        self._transport.send(head)
                        self._bytes_out += len(head)
                    data = HEADER.pack(size) + payload if auth is None else auth.seal(payload)
                    sent = len(data)
                    self._transport.send(data)
                else:  # may take long: a Stop waits until the message is out whole
                    with stop_held_back():
                        sent = self._send_large(head, views, payload,
                                                self._config.max_message_size,
                                                seq if kind == REPLY else None)
            except ConnectionClosed as exc:
                self._lost(str(exc))  # the stream may be cut mid-frame: it cannot go on
                raise self._closed_error() from None
            except MessageCut:
                self._lost("a second Stop cut a message in the middle of its sending")
                stop = KeyboardInterrupt(f"the second Stop closed the connection to "
                                         f"{self.peer}: a message was cut in the middle of "
                                         f"its sending")
                raise mark_stop(stop, self.peer, self._hooks.error_rendering) from None
            except KeyboardInterrupt as exc:
                if not message_was_sent(exc):  # (held back until the message was out)
                    self._stop_in_send()
                raise
            self._bytes_out += sent
            self._messages_out += 1
            if kind == REQUEST:
                self._requests += 1

    def _send_large(self, head: bytes | None, views: list[memoryview] | None, payload: bytes,
                    limit: int, reply_to: int | None) -> int:
        """A message with large buffers or a large frame, after the releases (``head``);
        returns the bytes sent."""
        sent = 0
        if views is not None:
            # The buffers must come right before the message that uses them.
            if head is not None:
                self._transport.send(head)
                sent, head = len(head), None
            sent += self._send_buffers(views, limit, reply_to)
        data = self._framed(payload)
        if head is not None:
            data = head + data
        self._transport.send(data)
        return sent + len(data)

    def _stop_in_send(self) -> None:
        """A Stop landed while frames went out: one may be cut, or counted by its tag and
        never handed on. A session puts the stream right by resuming on a new link (the
        frame counted last is kept for it first, see net/session.py); any other
        connection cannot go on and closes."""
        session = self._session
        if session is None:
            self._lost("a Stop landed in the middle of sending a message: the stream "
                       "cannot go on")
            return
        auth = self._send_auth
        if auth is not None:
            session.keep_if_missing(auth.last_sealed)
        session.stop_landed("sending")

    @staticmethod
    def _checked_buffers(buffers: list[Any], body: int, limit: int) -> list[memoryview]:
        """Byte views of a message's buffers; the whole message must fit max_message_size."""
        if len(buffers) > MAX_BUFFERS:
            raise ProtocolError(f"a message may carry at most {MAX_BUFFERS} large buffers")
        views = [memoryview(buffer).cast("B") for buffer in buffers]
        total = body + sum(view.nbytes for view in views)
        if total > limit:
            raise ProtocolError(f"message of {total} bytes exceeds max_message_size "
                                f"({limit} bytes); not sent")
        return views

    def _framed(self, payload: bytes) -> bytes:
        """A frame of ``payload``, tagged when the session has keys (counts it: send it)."""
        auth = self._send_auth
        return HEADER.pack(len(payload)) + payload if auth is None else auth.seal(payload)

    def _send_buffers(self, views: list[memoryview], limit: int, reply_to: int | None) -> int:
        """The BUFFERS frame and the raw buffers, each sent as it is (no copy); a buffer's
        tag is computed over its view and sent after it."""
        send = self._transport.send
        header = pack(buffers_header(views, reply_to))
        frame(header, limit)  # refuses an oversized one before anything is sent
        data = self._framed(header)
        send(data)
        auth = self._send_auth
        for view in views:
            send(HEADER.pack(view.nbytes))
            send(view)
            if auth is not None:
                send(auth.tag(view.nbytes, view))
        return sum(view.nbytes + 4 for view in views)

    def _send_ack(self) -> None:
        """Tell the session's peer how much of its stream arrived, so it can let go of
        what it keeps for re-sending. Only when no other thread is sending: a reader never
        waits for the send lock (the next read tries again)."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            session = self._session
            received = session.received
            data = self._framed(pack([Kind.NOTIFY, Op.ACK, received]))
            session.ack_sent(received)
            self._transport.send(data)
            self._bytes_out += len(data)
            self._messages_out += 1
        except ConnectionClosed as exc:
            self._lost(str(exc))
        except KeyboardInterrupt:
            self._stop_in_send()
            raise
        finally:
            self._send_lock.release()


    def _queue_release(self, oid: int, count: int) -> None:
        if not self._closed:
            self._releases.append((oid, count))

    def _take_releases(self) -> list[tuple[int, int]]:
        releases = []
        pop = self._releases.popleft
        while True:
            try:
                releases.append(pop())
            except IndexError:
                break
        proxies = self._proxies
        for oid, _count in releases:
            ref = proxies.get(oid)
            if ref is not None and ref() is None:
                proxies.pop(oid, None)
        self._releases_sent += len(releases)
        return releases

    def _flush_releases(self) -> None:
        if not self._releases or self._closed:
            return
        with self._send_lock:
            releases = self._take_releases()
            if releases:
                payload = pack([Kind.NOTIFY, Op.DEL, releases])
                frame(payload, self._config.max_message_size)  # refuses an oversized one
                try:
                    data = self._framed(payload)
                    self._transport.send(data)
                except ConnectionClosed as exc:
                    self._lost(str(exc))
                    return
                except KeyboardInterrupt:
                    self._stop_in_send()
                    raise
                self._bytes_out += len(data)
                self._messages_out += 1

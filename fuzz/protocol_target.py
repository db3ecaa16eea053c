"""The fuzz target: bytes into the frame decoder, the message decoder and the request and
notification handlers of a live Connection. The only exception allowed out is ProtocolError.

``check(data)`` runs one input and raises ``Finding`` for anything else. Known core bugs
(each with an xfail'd test in tests/hardening) are counted in ``KNOWN`` instead, so the smoke
run in ``make test`` stays green until they are fixed; ``--strict`` makes them findings too.
"""

from __future__ import annotations

import collections
import os
import socket
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
from msgpack import ExtType  # noqa: E402

import remote_kernel as rk  # noqa: E402
from remote_kernel.core.connection import Connection  # noqa: E402
from remote_kernel.errors import ConnectionClosed, ProtocolError  # noqa: E402
from remote_kernel.net.transports.sockets import SocketTransport  # noqa: E402
from remote_kernel.protocol.codec import HEADER, FrameDecoder  # noqa: E402
from remote_kernel.protocol.messages import OID, Ext, Kind, Op  # noqa: E402

MAX_FRAME = 1 << 16
KNOWN: collections.Counter[str] = collections.Counter()
STRICT = os.environ.get("RK_FUZZ_STRICT") == "1"


class Finding(Exception):
    """An input made the protocol raise something other than ProtocolError."""


class FuzzService(rk.Service):
    """What a server typically exposes: values, a container, a callable."""

    def __init__(self) -> None:
        self.items = [1, "two", b"three"]
        self.mapping = {"a": 1}

    def exposed_echo(self, value: Any) -> Any:
        return value

    def exposed_items(self) -> list:
        return self.items

    def exposed_mapping(self) -> dict:
        return self.mapping

    def exposed_add(self, a: Any, b: Any) -> Any:
        return a + b


# Known core bugs, by (exception type, innermost remote_kernel function): counted instead of
# failing a run until they are fixed. All that the first fuzzing found are fixed; keep the
# mechanism for the next ones (each with a test in tests/hardening).
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _known(exc: BaseException) -> str | None:
    """The name of a known core bug this exception is, or None."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "remote_kernel" in f.filename]
    if not ours:
        return None
    kind = type(exc).__name__
    return KNOWN_BUGS.get((kind, ours[-1].name)) or KNOWN_BUGS.get((kind, "*"))


class Harness:
    """A server-side Connection over a socketpair, driven synchronously."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.peer: socket.socket | None = None
        self.inputs = 0

    def connection(self) -> Connection:
        if self.conn is None or self.conn.closed:
            if self.peer is not None:
                self.peer.close()
            left, right = socket.socketpair()
            right.setblocking(False)
            self.peer = right
            self.conn = Connection(SocketTransport(left, "fuzz"), FuzzService,
                                   config={"max_message_size": MAX_FRAME,
                                           "sync_request_timeout": 0.01},
                                   name="fuzz")
            # The peer holds the root (oid 1) and a list (oid 2): give inputs objects to hit.
            self.conn._boxer.box(self.conn._service)
            self.conn._boxer.box(self.conn._service.items)
        return self.conn

    def drain(self) -> None:
        assert self.peer is not None
        try:
            while self.peer.recv(1 << 20):
                pass
        except (BlockingIOError, OSError):
            pass

    def check(self, data: bytes) -> None:
        self.inputs += 1
        try:
            self._frames(data)
            self._message(data)
        except Finding:
            raise
        except Exception as exc:  # noqa: BLE001 - the point of a fuzzer
            name = _known(exc)
            if name is not None and not STRICT:
                KNOWN[name] += 1
                if self.conn is not None:
                    self.conn.close()
                return
            raise Finding(f"{type(exc).__name__}: {exc} for input {data[:200]!r}") from exc

    def _frames(self, data: bytes) -> None:
        # A small shared buffer puts most frames on the large-frame path, some of them
        # announced as bytes (received in place): the frames must not change.
        decoder = FrameDecoder(MAX_FRAME, chunk=64)
        decoder.expect(b & 1 for b in data[1:9])
        cut = data[0] % (len(data) + 1) if data else 0
        try:
            frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        except ProtocolError:
            return
        whole = FrameDecoder(MAX_FRAME)
        if frames != whole.feed(data):
            raise Finding(f"split feed differs from whole feed for {data[:200]!r}")

    def _message(self, data: bytes) -> None:
        conn = self.connection()
        try:
            message = conn._boxer.decode(data)
            if type(message) is not tuple or len(message) < 2:
                return
            conn._dispatch(message)
        except (ProtocolError, ConnectionClosed):
            pass  # a violation closes the connection itself; the next input gets a new one
        finally:
            self.drain()


HARNESS = Harness()


def check(data: bytes) -> None:
    HARNESS.check(data)


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _peerref(oid: int) -> ExtType:
    return ExtType(Ext.PEERREF, OID.pack(oid))


def seeds() -> list[bytes]:
    """Valid messages of every kind and opcode, to start the fuzzer where the code is."""
    root, items = _peerref(1), _peerref(2)
    requests: list[list] = [
        [Op.PING, b"x"], [Op.GETROOT], [Op.GETATTR, root, "echo"],
        [Op.GETATTR, root, "__class__"], [Op.SETATTR, root, "x", 1], [Op.DELATTR, root, "x"],
        [Op.CALL, root, [1], None], [Op.CALLATTR, root, "echo", [1], {"k": 2}],
        [Op.CALLATTR, root, "add", [1, 2], None], [Op.CALLATTR, items, "append", [3], None],
        [Op.REPR, items], [Op.STR, root], [Op.CMP, items, [1], "__eq__"],
        [Op.CMP, root, 1, "__getattribute__"], [Op.HASH, root], [Op.DIR, root],
        [Op.INSPECT, items], [Op.BUFFITER, items, 10], [Op.CTXEXIT, root, "ValueError", "m"],
        [Op.INSTANCECHECK, root, items, False], [Op.OBTAIN, items],
        [Op.DELIVER, ExtType(Ext.LIST, _packb([1, 2]))], [Op.DISPLAY, items, None, None],
        [Op.COMPLETE, root], [Op.OINFO, root, "echo", 0], [Op.KEYS, root],
        [Op.CHILDREN, root, [["attr", "items"]], 10],
    ]
    messages: list[list] = [[Kind.REQUEST, n, *request] for n, request in enumerate(requests)]
    messages += [
        [Kind.NOTIFY, Op.DEL, [[1, 1]]], [Kind.NOTIFY, Op.CANCEL, 5], [Kind.NOTIFY, Op.CLOSE],
        [Kind.REPLY, 1, None], [Kind.EXCEPTION, 1, ExtType(Ext.EXC, _packb(
            ["builtins", "ValueError", ["m"], "m", "tb", [["f.py", 1, "f", "x"]]]))],
        [Kind.REPLY, 2, [ExtType(Ext.BIGINT, b"123456789012345678901234567890"),
                         ExtType(Ext.COMPLEX, struct.pack(">dd", 1.0, 2.0)),
                         ExtType(Ext.FROZENSET, _packb([1, 2])),
                         ExtType(Ext.SLICE, _packb([1, None, 2])),
                         ExtType(Ext.ELLIPSIS, b""), ExtType(Ext.NOTIMPLEMENTED, b""),
                         ExtType(Ext.SET, _packb([1])), ExtType(Ext.DICT, _packb(["a", 1])),
                         ExtType(Ext.BYTEARRAY, b"ab"),
                         ExtType(Ext.NDARRAY, _packb(["<i4", [2], False, b"\1\0\0\0\2\0\0\0"])),
                         ExtType(Ext.MASKED, _packb([
                             ["<i4", [2], False, b"\1\0\0\0\2\0\0\0", "C"],
                             ["|b1", [2], False, b"\0\1", "C"],
                             ["<i4", [], True, b"\7\0\0\0", "C"], False])),
                         ExtType(Ext.PANDAS, _packb([
                             "series", ["strings", "object", ["|u1", [2], False, b"ab", "C"],
                                        ["<i8", [3], False, bytes(8) + b"\1" + bytes(7)
                                         + b"\2" + bytes(7), "C"],
                                        ["|u1", [2], False, b"\0\0", "C"]],
                             ["range", 0, 2, 1, "idx"], "name"])),
                         ExtType(Ext.REF, _packb([9, 1, ["m", "C", ["f"], ["__len__"], 0, ""]]))]],
    ]
    payloads = [_packb(message) for message in messages]
    return payloads + [HEADER.pack(len(p)) + p for p in payloads[:4]]

"""A hostile peer that speaks the wire format by hand: it sends whatever bytes it likes and
records every message the victim sends back."""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

import msgpack
from msgpack import ExtType

from remote_kernel.protocol.codec import HEADER, FrameDecoder
from remote_kernel.protocol.messages import OID, REF, Ext, Kind, Op


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def peerref(oid: int) -> ExtType:
    """A reference to one of the victim's own objects."""
    return ExtType(Ext.PEERREF, OID.pack(oid))


def ref(oid: int, tid: int, descriptor: tuple | list | None = None) -> ExtType:
    """A reference to an object of ours, with its type descriptor the first time."""
    if descriptor is None:
        return ExtType(Ext.REF, REF.pack(oid, tid))
    return ExtType(Ext.REFDESC, packb([oid, tid, list(descriptor)]))


def exc(module: str, qualname: str, message: str = "boom", args: Any = None) -> ExtType:
    return ExtType(Ext.EXC, packb([module, qualname, [message] if args is None else args,
                                   message, "", [], ""]))


class Decoded:
    """A REF or EXC decoded just enough for the tests."""

    def __init__(self, code: int, data: bytes) -> None:
        self.code = code
        self.data = data
        self.oid: int | None = None
        self.qualname = ""
        self.message = ""
        if code == Ext.REF:
            self.oid, _ = REF.unpack(data)
        elif code == Ext.REFDESC:
            self.oid = msgpack.unpackb(data, strict_map_key=False)[0]
        elif code == Ext.EXC:
            module, qualname, _args, message = msgpack.unpackb(
                data, ext_hook=Decoded, strict_map_key=False)[:4]
            self.qualname = f"{module}.{qualname}"
            self.message = message

    def __repr__(self) -> str:
        return f"<Decoded ext {self.code} oid={self.oid} {self.qualname} {self.message!r}>"


class RawPeer:
    """One end of a socket, spoken to by hand."""

    def __init__(self, sock: socket.socket, reader: Any = None) -> None:
        """``reader``: what ``client_handshake`` returned, when it ran on ``sock`` (with a
        token, the frames are then tagged and checked with the session's keys)."""
        self.sock = sock
        self.decoder = FrameDecoder(1 << 30)
        self._send_auth = getattr(reader, "send_auth", None)
        if reader is not None:
            self.decoder.authenticator = reader.decoder.authenticator
        self.inbox: list[tuple] = []
        self.received: list[tuple] = []  # every message the victim sent, in order
        self.bytes_received = bytearray()
        self._seq = itertools.count(10_000)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: list) -> None:
        payload = packb(message)
        auth = self._send_auth
        self.send_bytes(frame(payload) if auth is None else auth.seal(payload))

    def recv(self, timeout: float = 5.0) -> tuple:
        deadline = time.monotonic() + timeout
        while not self.inbox:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the victim sent nothing")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("the victim closed the connection")
            self.bytes_received += data
            for payload in self.decoder.feed(data):
                message = msgpack.unpackb(payload, ext_hook=Decoded, strict_map_key=False)
                self.received.append(message)
                self.inbox.append(message)
        return self.inbox.pop(0)

    def recv_kind(self, kinds: tuple[int, ...], timeout: float = 5.0) -> tuple:
        """The next message of one of ``kinds`` (release notifications are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.monotonic()))
            if message[0] in kinds:
                return message

    def request(self, op: int, *args: Any, timeout: float = 5.0) -> tuple[bool, Any]:
        """Send a request; (True, value) for a reply, (False, Decoded exception) else."""
        seq = next(self._seq)
        self.send([Kind.REQUEST, seq, int(op), *args])
        while True:
            message = self.recv_kind((Kind.REPLY, Kind.EXCEPTION, Kind.REQUEST), timeout)
            if message[0] == Kind.REQUEST:
                continue  # not expected here; recorded in self.received
            if message[1] == seq:
                return message[0] == Kind.REPLY, message[2]

    def getroot(self) -> int:
        ok, value = self.request(Op.GETROOT)
        assert ok and isinstance(value, Decoded) and value.oid is not None, value
        return value.oid

    def closed_by_victim(self, timeout: float = 5.0) -> bool:
        """True once the victim closes its end (reading and discarding what it sends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
        return False

"""A TCP relay on loopback that splits both directions into frames and lets a test forward,
change, drop, duplicate or inject them (an on-path attacker), or just forward (a
transparent relay). It reads the server's hello to know whether frames after the
handshake carry a 16-byte tag (protocol 2) or not (protocol 1), so the same attack runs
against either revision."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

import msgpack

from remote_kernel.protocol.codec import HEADER

TAG = 16
# (direction "c2s" or "s2c", index of the frame after the handshake, whole frame bytes,
# tag size) -> the byte strings to send instead
Tamper = Callable[[str, int, bytes, int], list[bytes]]


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class FrameRelay:
    """Accepts one client at a time on ``port`` and relays it to ``target``."""

    def __init__(self, target: tuple[str, int], tamper: Tamper | None = None,
                 upstream_tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tamper = tamper
        self.upstream_tls = upstream_tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tag_size = 0
        self.raw = False  # forward bytes as they come, without looking at frames
        self._hello_seen = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            if self.upstream_tls is not None:
                upstream = self.upstream_tls.wrap_socket(upstream)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(upstream, client, "s2c"),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, "c2s"),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        if self.raw:
            self._forward(source, sink)
            return
        handshake_frames = 2 if direction == "s2c" else 1
        index = -handshake_frames
        try:
            while True:
                header = _recv_exactly(source, 4)
                (length,) = HEADER.unpack(header)
                if index >= 0 and direction == "c2s":
                    self._hello_seen.wait(5)
                tag = self.tag_size if index >= 0 else 0
                whole = header + _recv_exactly(source, length + tag)
                if index == -2 and direction == "s2c":  # the hello: which revision
                    hello = msgpack.unpackb(whole[4:])
                    self.tag_size = TAG if hello.get("protocol", 1) >= 2 else 0
                    self._hello_seen.set()
                if index >= 0 and self.tamper is not None:
                    parts = self.tamper(direction, index, whole, self.tag_size)
                else:
                    parts = [whole]
                for part in parts:
                    sink.sendall(part)
                index += 1
        except (EOFError, OSError):
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _forward(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


def byte_relay(target: tuple[str, int],
               upstream_tls: ssl.SSLContext | None = None) -> FrameRelay:
    """A relay that forwards every byte unchanged, as it arrives."""
    relay = FrameRelay(target, None, upstream_tls)
    relay.raw = True
    return relay

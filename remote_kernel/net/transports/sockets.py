"""Socket transports: TCP (optionally TLS) and unix sockets."""

from __future__ import annotations

import select
import socket
import ssl
import struct

from remote_kernel.core.transport import Transport
from remote_kernel.errors import ConnectionClosed
from remote_kernel.net.tls import explain_ssl_error

RECV_SLICE = 1.0  # seconds; matches the connection's READ_SLICE


class SocketTransport(Transport):
    """A connected socket. Reads wait with poll() so every wait can have a timeout while
    sends stay plain blocking ``sendall`` calls of whole frames."""

    def __init__(self, sock: socket.socket, peer_name: str) -> None:
        self.sock = sock
        self.peer_name = peer_name
        sock.settimeout(None)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A blocking receive gives up after RECV_SLICE: long waits need no poll() first.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(RECV_SLICE), int(RECV_SLICE % 1 * 1e6)))
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._closed = False

    def send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc

    def has_buffered_data(self) -> bool:
        return self._tls and self.sock.pending() > 0  # type: ignore[attr-defined]

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer_name} is closed")
        if (timeout is not None and timeout < RECV_SLICE) and not self.has_buffered_data():
            if not self._poller.poll(max(0, int(timeout * 1000))):
                return 0
        try:
            got = self.sock.recv_into(buffer)
        except (ssl.SSLWantReadError, BlockingIOError):
            return 0  # RECV_SLICE passed with nothing to read
        except ssl.SSLError as exc:
            raise ConnectionClosed(
                f"TLS connection to {self.peer_name} failed: {explain_ssl_error(exc)}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc
        if got == 0:
            raise ConnectionClosed(f"{self.peer_name} closed the connection")
        return got

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

"""Socket transports: TCP (optionally TLS) and unix sockets."""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time

from remote_kernel.core.transport import PeerClosed, StopMidRead, Transport
from remote_kernel.errors import ConnectionClosed
from remote_kernel.net.tls import explain_ssl_error

RECV_SLICE = 1.0  # seconds; matches the connection's READ_SLICE
TLS_SLICE = 0.25  # a TLS socket's own timeout: the longest a read or write blocks at once
TLS_SEND_CHUNK = 256 * 1024  # TLS writes go in pieces, so progress can be seen
_POLL_OUT = select.POLLOUT | select.POLLERR | select.POLLHUP
_get_ident = threading.get_ident
_MAIN = threading.main_thread().ident
_TCP_INFO = getattr(socket, "TCP_INFO", None)  # Linux: its first byte is the TCP state
_TCP_CLOSE = 7  # include/net/tcp_states.h: ended without the peer's FIN (timeout, reset)


class SocketTransport(Transport):
    """A connected socket.

    Plain sockets read with a blocking ``recv`` that gives up after RECV_SLICE (no poll()
    first on the fast path) and send without blocking (``MSG_DONTWAIT``), waiting for room
    with poll() when the peer's window is full; so a send never blocks longer than its
    timeout and a ``close()`` from another thread ends it at once. TLS sockets run with a
    short socket timeout instead, as OpenSSL must be called again with the same data."""

    def __init__(self, sock: socket.socket, peer_name: str) -> None:
        self.sock = sock
        self.peer_name = peer_name
        self._tls = isinstance(sock, ssl.SSLSocket)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            sock.settimeout(TLS_SLICE)
        else:
            sock.settimeout(None)
            # A blocking receive gives up after RECV_SLICE: long waits need no poll() first.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                            struct.pack("ll", int(RECV_SLICE), int(RECV_SLICE % 1 * 1e6)))
        self._slice = TLS_SLICE if self._tls else RECV_SLICE  # the longest wait at once
        self._slice_ms = int(self._slice * 1000)
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        self._out_poller = select.poll()
        self._out_poller.register(sock.fileno(), _POLL_OUT)
        self._closed = False

    # -- sending -------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        if self._tls:
            self._send_tls(memoryview(data).cast("B"), timeout)
            return
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except (OSError, ValueError) as exc:
            raise self._lost(exc) from exc
        if sent != len(data):  # the peer's window is full: wait for room, up to the timeout
            self._send_rest(memoryview(data).cast("B")[sent:], timeout)

    def _send_rest(self, view: memoryview, timeout: float | None) -> None:
        limit = self.send_timeout if timeout is None else timeout
        progress_at = time.monotonic()
        while view:
            if self._closed:
                raise ConnectionClosed(f"connection to {self.peer_name} is closed")
            left = limit - (time.monotonic() - progress_at)
            if left <= 0:
                raise self._stalled(limit)
            if not self._out_poller.poll(min(left, RECV_SLICE) * 1000):
                continue
            try:
                sent = self.sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except (OSError, ValueError) as exc:
                raise self._lost(exc) from exc
            if sent:
                view = view[sent:]
                progress_at = time.monotonic()

    def _send_tls(self, view: memoryview, timeout: float | None) -> None:
        limit = self.send_timeout if timeout is None else timeout
        progress_at = time.monotonic()
        while view:
            piece = view[:TLS_SEND_CHUNK]
            try:
                sent = self.sock.send(piece)
            except (TimeoutError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                # OpenSSL keeps what it wrote of ``piece``; the retry passes it again.
                if self._closed:
                    raise ConnectionClosed(f"connection to {self.peer_name} is closed") \
                        from None
                if time.monotonic() - progress_at >= limit:
                    raise self._stalled(limit) from None
                continue
            except (OSError, ValueError) as exc:
                raise self._lost(exc) from exc
            view = view[sent:]
            progress_at = time.monotonic()

    def _stalled(self, limit: float) -> ConnectionClosed:
        return ConnectionClosed(f"{self.peer_name} stopped reading: nothing could be sent "
                                f"for {limit:g} s")

    def _lost(self, exc: BaseException) -> ConnectionClosed:
        if self._closed:
            return ConnectionClosed(f"connection to {self.peer_name} is closed")
        return ConnectionClosed(f"connection to {self.peer_name} lost: {exc}")

    # -- receiving -----------------------------------------------------------------------

    def has_buffered_data(self) -> bool:
        return self._tls and self.sock.pending() > 0  # type: ignore[attr-defined]

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if self._closed:
            raise ConnectionClosed(f"connection to {self.peer_name} is closed")
        if _get_ident() == _MAIN:
            # The main thread (the only one a Stop lands in) waits in poll(), which takes
            # no bytes: a Stop landing as a receive returns would lose what it read.
            if not (self._tls and self.sock.pending()):
                wait = self._slice_ms if timeout is None or timeout >= self._slice else \
                    max(0, int(timeout * 1000))
                if not self._poller.poll(wait):
                    return 0
        elif timeout is not None and timeout < self._slice and not self.has_buffered_data():
            if not self._poller.poll(max(0, int(timeout * 1000))):
                return 0
        try:
            got = self.sock.recv_into(buffer)
        except KeyboardInterrupt:  # bytes may have been taken: only a resume knows
            raise StopMidRead(f"a Stop landed while reading from {self.peer_name}") from None
        except (ssl.SSLWantReadError, BlockingIOError, TimeoutError):
            return 0  # a slice passed with nothing (or only part of a TLS record) to read
        except ssl.SSLError as exc:
            raise ConnectionClosed(
                f"TLS connection to {self.peer_name} failed: {explain_ssl_error(exc)}"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"connection to {self.peer_name} lost: {exc}") from exc
        if got == 0:
            if self._link_gave_up():
                raise ConnectionClosed(f"connection to {self.peer_name} lost: the link "
                                       f"stopped answering")
            raise PeerClosed(f"{self.peer_name} closed the connection")
        return got

    def _link_gave_up(self) -> bool:
        """Whether an end of stream is the kernel's, not the peer's: a link that timed out
        (TCP_USER_TIMEOUT, keepalive) or whose host became unreachable ends in the CLOSE
        state, and once a send took its error a receive sees a bare 0 as after a goodbye.
        The peer's own end of stream (its FIN) leaves the socket in CLOSE_WAIT."""
        if _TCP_INFO is None or self.sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            state = self.sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0]
        except OSError:
            return False
        return state == _TCP_CLOSE

    def fileno(self) -> int:
        return self.sock.fileno()

    def abort(self) -> None:
        """Close with a reset instead of an end of stream (TCP: SO_LINGER 0), so the peer
        knows this side did not end the conversation (net/session.py)."""
        if self._closed:
            return
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6):
            self.close()
            return
        self._closed = True
        try:
            # Wakes a thread blocked in a receive without sending an end of stream.
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Wakes a thread blocked in a receive or waiting for room to send.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

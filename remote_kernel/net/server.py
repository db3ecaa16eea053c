"""Server: accepts connections and serves each from its own thread.

``Server(...)`` binds when constructed (``server.port`` is known before ``start()``),
refuses a non-loopback address without a token or TLS client certificates, and runs the
handshake of every connection with a deadline in that connection's thread.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import threading
from typing import Any

from remote_kernel.config import make_config
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import ClassicService, make_service
from remote_kernel.errors import AuthenticationError, ConnectionClosed, ProtocolError
from remote_kernel.net.auth import server_handshake
from remote_kernel.net.tls import requires_client_certificates, server_context
from remote_kernel.net.transports.sockets import SocketTransport

log = logging.getLogger("remote_kernel.net.server")
HANDSHAKE_TIMEOUT = 10.0


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """Serves ``service`` (a Service class: one instance per connection; or an instance)."""

    def __init__(self, service: Any = ClassicService, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, tls: Any = None, unix_path: str | None = None,
                 config: Any = None, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        make_config(config)  # an unknown key or a wrong type fails here, not per connection
        self.service = service
        self.config = config
        self.token = token or None
        self.handshake_timeout = handshake_timeout
        self._tls = server_context(tls)
        self.host = host
        self.unix_path = unix_path
        if unix_path is None and not is_loopback(host) and not self.token \
                and not requires_client_certificates(self._tls):
            raise ValueError(
                f"refusing to listen on non-loopback address {host!r} without a token or TLS "
                "client certificates: anyone who reaches the port could run code here"
            )
        self._sock = self._bind(host, port, unix_path)
        self.port: int = 0 if unix_path else self._sock.getsockname()[1]
        self._closed = False
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._accepting = threading.Event()

    @property
    def address(self) -> str:
        if self.unix_path:
            return self.unix_path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _bind(self, host: str, port: int, unix_path: str | None) -> socket.socket:
        if unix_path:
            if os.path.exists(unix_path):
                os.unlink(unix_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o177)  # the socket file is ours alone
            try:
                sock.bind(unix_path)
            finally:
                os.umask(old_umask)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(128)
        return sock

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Accept connections until ``close()``; blocks."""
        self._accepting.set()
        try:
            self._sock.settimeout(0.2)
        except OSError:  # closed before it started
            self._accepting.clear()
            return
        try:
            while not self._closed:
                try:
                    client, address = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._closed:
                        break
                    raise
                threading.Thread(target=self._serve_client, args=(client, address),
                                 name=f"rk-conn-{address}", daemon=True).start()
        finally:
            self._accepting.clear()

    def serve_in_background(self) -> Server:
        if self._thread is None:
            self._thread = threading.Thread(target=self.start, name="rk-server", daemon=True)
            self._thread.start()
            self._accepting.wait(5)
        return self

    def __enter__(self) -> Server:
        return self.serve_in_background()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.close("server shutting down")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        if self.unix_path and os.path.exists(self.unix_path):
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    @property
    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._connections)

    # -- one connection --------------------------------------------------------------------

    def _peer_name(self, address: Any) -> str:
        if self.unix_path:
            return self.unix_path
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _serve_client(self, sock: socket.socket, address: Any) -> None:
        peer = self._peer_name(address)
        try:
            if self._tls is not None:
                sock.settimeout(self.handshake_timeout)
                try:
                    sock = self._tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.warning("TLS handshake with %s failed: %s", peer, exc)
                    sock.close()
                    return
            transport = SocketTransport(sock, peer)
            service = make_service(self.service)
            service_name = type(service).__name__
            try:
                reader = server_handshake(transport, self.token, service_name,
                                          self.handshake_timeout)
            except (AuthenticationError, ProtocolError, ConnectionClosed) as exc:
                log.info("dropping %s: %s", peer, exc)
                transport.close()
                return
            conn = Connection(transport, service, self.config, reader=reader)
        except Exception:
            log.exception("could not set up the connection from %s", peer)
            sock.close()
            return
        with self._lock:
            if self._closed:
                conn.close("server shutting down")
                return
            self._connections.add(conn)
        try:
            conn.serve_all()
        except ProtocolError as exc:
            log.warning("connection from %s closed: %s", peer, exc)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)


ThreadedServer = Server  # RPyC's name

"""Server: accepts connections and serves each from its own thread.

``Server(...)`` binds when constructed (``server.port`` is known before ``start()``),
refuses a non-loopback address without a token or TLS client certificates, and runs the
handshake of every connection with a deadline in that connection's thread.

Before authentication a peer costs little and cannot cost much: the TLS and token handshakes
share one absolute deadline, the handshake reads through a 4 KiB buffer, and at most
``max_pending`` connections may be unauthenticated at once. When that many are, a new
connection takes the place of the one that has made the least progress (no TLS session yet)
for the longest: strangers holding every slot cannot lock out a client with the token, from
the same address either (a shared NAT, loopback). The evicted peer's socket is shut down,
which ends its handshake thread at once; while such threads end, at most ``max_pending``
more exist (beyond that, new connections are closed as soon as they are accepted, and
logged). No error of ``accept()`` ends the server: when it runs out of descriptors (EMFILE)
it sheds the connection waiting in the backlog and goes on.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import stat
import threading
import time
from typing import Any

from remote_kernel.config import make_config
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import make_service
from remote_kernel.errors import AuthenticationError, ConnectionClosed, ProtocolError
from remote_kernel.net.auth import SessionTable, server_handshake
from remote_kernel.net.detached import DetachedSessions
from remote_kernel.net.session import ResumableTransport, configure_liveness
from remote_kernel.net.tls import requires_client_certificates, server_context
from remote_kernel.net.transports.sockets import SocketTransport

log = logging.getLogger("remote_kernel.net.server")
HANDSHAKE_TIMEOUT = 10.0
MAX_PENDING = 64  # connections allowed to be unauthenticated at the same time
ACCEPT_BACKOFF = 0.05  # seconds to wait after an accept() error before the next try
LOG_EVERY = 5.0  # refused connections and accept() errors are logged at most this often
CLOSE_BUDGET = 2.0  # close(): seconds for polite closes; the rest are cut at once


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # An IPv4-mapped address (::ffff:127.0.0.1) is refused as before on every Python
    # (3.13's ipaddress calls it loopback, earlier versions did not).
    return address.is_loopback and getattr(address, "ipv4_mapped", None) is None


class Server:
    """Serves ``service`` (a Service class: one instance per connection; or an instance).
    ``service`` has no default, as in RPyC: serving the whole interpreter
    (``rk.ClassicService``) is said, never assumed."""

    def __init__(self, service: Any, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, tls: Any = None, unix_path: str | None = None,
                 config: Any = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 max_pending: int = MAX_PENDING) -> None:
        self._settings = make_config(config)  # an unknown key or a wrong type fails here
        self.service = service
        self.config = config
        self.sessions = SessionTable()  # sessions a client may resume (net/session.py)
        self.detached = DetachedSessions(self._settings.max_detached_sessions,
                                         self._settings.max_detached_bytes)
        self.token = token or None
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
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
        self._lock = threading.RLock()  # close() may run in a signal handler
        self._thread: threading.Thread | None = None
        self._accepting = threading.Event()
        # Connections not yet authenticated, and those evicted whose thread has not ended
        # yet (both under self._lock).
        self._pending: set[_Pending] = set()
        self._evicted: set[_Pending] = set()
        self.refused = 0  # connections closed at once because too many were pending
        self.evictions = 0  # pending connections shut down to make room for a new one
        self._last_log: dict[str, float] = {}
        self._unix_inode: tuple[int, int] | None = None
        if unix_path:
            info = os.stat(unix_path)
            self._unix_inode = (info.st_dev, info.st_ino)

    @property
    def address(self) -> str:
        if self.unix_path:
            return self.unix_path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _bind(self, host: str, port: int, unix_path: str | None) -> socket.socket:
        if unix_path:
            _remove_stale_socket(unix_path)
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
        spare = _spare_descriptor()
        try:
            while not self._closed:
                try:
                    client, address = self._sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._closed:
                        break
                    spare = self._accept_failed(exc, spare)
                    continue
                pending = _Pending(client)
                try:
                    self._admit(pending, address)
                except Exception as exc:  # a thread that cannot start: shed this one
                    client.close()
                    self._release_pending(pending)
                    self._log_sometimes("admit", "dropping a connection: %s", exc)
        finally:
            if spare is not None:
                os.close(spare)
            self._accepting.clear()

    def _admit(self, pending: _Pending, address: Any) -> None:
        victim = None
        with self._lock:
            if len(self._pending) >= self.max_pending \
                    and len(self._evicted) < self.max_pending:
                victim = min(self._pending, key=_Pending.rank)
                self._pending.discard(victim)
                self._evicted.add(victim)
                self.evictions += 1
            admitted = len(self._pending) < self.max_pending
            if admitted:
                self._pending.add(pending)
            else:
                self.refused += 1
        if victim is not None:
            victim.evict()
            self._log_sometimes("evict", "%d connections are authenticating: the one "
                                "waiting longest without progress makes room (%d so far)",
                                self.max_pending, self.evictions)
        if not admitted:
            pending.sock.close()  # at once: an unauthenticated peer gets no thread, no buffer
            self._log_sometimes("pending", "refusing connections: %d are already "
                                "authenticating (%d refused so far)",
                                self.max_pending, self.refused)
            return
        threading.Thread(target=self._serve_client, args=(pending, address),
                         name=f"rk-conn-{address}", daemon=True).start()

    def _release_pending(self, pending: _Pending) -> None:
        with self._lock:
            self._pending.discard(pending)
            self._evicted.discard(pending)

    def _accept_failed(self, exc: OSError, spare: int | None) -> int | None:
        """Survive any accept() error. Out of descriptors, the connection waiting in the
        backlog is accepted with a descriptor kept in reserve and closed, so the listening
        socket does not stay readable with nobody able to take the connection."""
        self._log_sometimes("accept", "accept() failed: %s", exc)
        if exc.errno in (errno.EMFILE, errno.ENFILE) and spare is not None:
            os.close(spare)
            try:
                client, _ = self._sock.accept()
                client.close()
            except OSError:
                pass
            spare = _spare_descriptor()
        time.sleep(ACCEPT_BACKOFF)
        return spare

    def _log_sometimes(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._last_log[key] = now
            log.warning(message, *args)

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
        # Polite closes (a last message to each peer) while the budget lasts; a peer that
        # does not read costs each at most the connection's close grace.
        deadline = time.monotonic() + CLOSE_BUDGET
        for conn in connections:
            if time.monotonic() < deadline:
                conn.close("server shutting down")
            else:
                conn.abort("server shutting down")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        if self.unix_path and self._unix_inode is not None:
            try:  # only our own socket: something else put there since stays
                info = os.stat(self.unix_path)
                if (info.st_dev, info.st_ino) == self._unix_inode:
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

    def _serve_client(self, pending: _Pending, address: Any) -> None:
        try:
            conn = self._authenticate(pending, address)
        finally:
            self._release_pending(pending)
        if conn is None:
            return
        if pending.evicted:  # made room for another just as it finished: it goes
            conn.abort("evicted before authentication ended")
            return
        with self._lock:
            if self._closed:
                conn.close("server shutting down")
                return
            self._connections.add(conn)
        peer = conn.peer
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


    def _authenticate(self, pending: _Pending, address: Any) -> Connection | None:
        """TLS, then the token handshake, within one deadline; the Connection, or None."""
        peer = self._peer_name(address)
        deadline = time.monotonic() + self.handshake_timeout
        sock = pending.sock
        try:
            if self._tls is not None:
                try:
                    sock = _tls_handshake(self._tls, sock, deadline, pending)
                except (ssl.SSLError, OSError) as exc:
                    if not pending.evicted:
                        log.warning("TLS handshake with %s failed: %s", peer, exc)
                    sock.close()
                    return None
                pending.progress = 1
            configure_liveness(sock, self._settings.unreachable_after)
            transport = SocketTransport(sock, peer)
            service = make_service(self.service)
            service_name = type(service).__name__
            try:
                reader = server_handshake(transport, self.token, service_name,
                                          max(0.0, deadline - time.monotonic()),
                                          self.sessions)
            except (AuthenticationError, ProtocolError, ConnectionClosed) as exc:
                log.info("dropping %s: %s", peer, "evicted" if pending.evicted else exc)
                transport.close()
                return None
            resumed = getattr(reader, "resumed", None)
            if resumed is not None:  # an existing session goes on over this link
                resumed.attach(transport, reader.session.peer_received,
                               reader.decoder.take_unparsed())
                return None
            return Connection(self._session(transport, reader), service, self.config,
                              reader=reader)
        except Exception:
            log.exception("could not set up the connection from %s", peer)
            sock.close()
            return None


    def _session(self, transport: SocketTransport, reader: Any) -> ResumableTransport:
        """The connection's session, kept for a resume while its link is down."""
        keys, session_id = reader.session.keys, reader.session.id
        session = ResumableTransport(
            transport, session_id=session_id,
            unreachable_after=self._settings.unreachable_after,
            resume_window=self._settings.resume_window, received=reader.decoder.pending,
            secret=keys.resume if keys is not None else None)
        self.sessions.add(session_id, session)
        self.detached.track(session)
        session.on_state.append(
            lambda state: state == "closed" and self.sessions.remove(session_id))
        reader.transport = session
        return session


class _Pending:
    """A connection not yet authenticated: its socket, since when, and how far it got."""

    __slots__ = ("evicted", "progress", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since = time.monotonic()
        self.progress = 0  # 1: its TLS session is established
        self.evicted = False

    def rank(self) -> tuple[int, float]:
        """The first to make room: the least progress, then waiting the longest."""
        return self.progress, self.since

    def evict(self) -> None:
        """Shut the socket down, which wakes its handshake thread (the thread closes it:
        closing here could cut a new connection given the same descriptor number)."""
        self.evicted = True
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # (not SSLSocket's own)
        except OSError:  # already closed by its thread
            pass


def _tls_handshake(context: ssl.SSLContext, sock: socket.socket, deadline: float,
                   pending: _Pending | None = None) -> ssl.SSLSocket:
    """The server side of a TLS handshake that ends by ``deadline`` however slowly the
    peer's bytes arrive (a socket timeout alone restarts with every byte), or when
    ``pending`` is evicted."""
    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False,
                              suppress_ragged_eofs=False)  # (see net/session.py: _lost)
    if pending is not None:
        pending.sock = tls  # the descriptor now belongs to it (sock is detached)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS handshake timed out")
            if pending is not None and pending.evicted:
                raise ConnectionAbortedError("evicted to make room for another connection")
            tls.settimeout(min(left, 0.5))
            try:
                tls.do_handshake()
                return tls
            except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
    except BaseException:
        tls.close()  # it owns the descriptor now
        raise


def _spare_descriptor() -> int | None:
    """A descriptor held in reserve for shedding connections when none is left."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left at ``path`` by an earlier server; anything else is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


ThreadedServer = Server  # RPyC's name

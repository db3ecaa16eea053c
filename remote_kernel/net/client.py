"""Ways to connect: TCP (+TLS) by address or connection file, unix socket, a child
interpreter over pipes, and ssh. What a target string means, and which of these opens it,
is net/targets.py (``rk.connect``)."""

from __future__ import annotations

import abc
import collections
import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from remote_kernel.config import make_config
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import VoidService
from remote_kernel.core.transport import Transport
from remote_kernel.errors import ConnectionClosed, RemoteKernelError
from remote_kernel.net import connfile
from remote_kernel.net.auth import Resume, client_handshake
from remote_kernel.net.session import (
    RECONNECT_TIMEOUT,
    Reopen,
    ResumableTransport,
    configure_liveness,
)
from remote_kernel.net.tls import client_context
from remote_kernel.net.transports.pipes import PipeTransport
from remote_kernel.net.transports.sockets import SocketTransport


def _trusted(conn: Connection, trust_output: bool) -> Connection:
    conn.trust_output = bool(trust_output)
    return conn


def connect_file(path: str | Path, *, service: Any = VoidService, token: str | None = None,
                 tls: Any = None, config: Any = None, timeout: float = 10.0,
                 trust_output: bool = False) -> Connection:
    info = connfile.read(Path(path))
    try:
        conn = _finish(FileLink(Path(path), tls), service, token or info.get("token"), config,
                       timeout)
    except ConnectionClosed as exc:
        pid = info.get("pid")
        if isinstance(pid, int) and not connfile.pid_alive(pid):
            name = info.get("name") or Path(path).stem
            raise ConnectionClosed(
                f"the server of connection file {name!r} (pid {pid}) is not running any "
                f"more: start it again with 'remote-kernel serve --name {name}'") from exc
        raise
    conn.connection_file = str(path)  # type: ignore[attr-defined]
    return _trusted(conn, trust_output)


class Link(abc.ABC):
    """How to open a link to one server, as often as a session needs a new one."""

    unreachable_after: float = 10.0  # (net/session.configure_liveness)

    @abc.abstractmethod
    def open(self, timeout: float) -> SocketTransport:
        """A new link, connected (and through TLS where asked), before its handshake."""

    def token(self) -> str | None:
        """The server's token as known now (None: the one the caller gave)."""
        return None


class TcpLink(Link):
    def __init__(self, host: str, port: int, tls: Any) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def open(self, timeout: float) -> SocketTransport:
        host, peer = self.host, self.peer
        try:
            sock = socket.create_connection((host, self.port), timeout=timeout)
        except OSError as exc:
            raise ConnectionClosed(f"cannot connect to {peer}: {_why(exc, host, timeout)}") \
                from exc
        configure_liveness(sock, self.unreachable_after)
        context, server_name = client_context(self.tls)
        if context is None:
            return SocketTransport(sock, peer)
        import ssl

        try:
            # A reset link must not look like the peer's goodbye (a TLS close): see session.py.
            sock = context.wrap_socket(sock, server_hostname=server_name or host,
                                       suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            from remote_kernel.errors import AuthenticationError
            from remote_kernel.net.tls import explain_ssl_error

            raise AuthenticationError(
                f"TLS handshake with {peer} failed: {explain_ssl_error(exc)}") from exc
        return SocketTransport(sock, peer)


class UnixLink(Link):
    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, timeout: float) -> SocketTransport:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise ConnectionClosed(f"cannot connect to {self.path}: {exc.strerror or exc}") \
                from exc
        return SocketTransport(sock, self.path)


class FileLink(Link):
    """The server of a connection file, read anew for each link (a server that restarted
    elsewhere is found, and then refuses the old session at once)."""

    def __init__(self, path: Path, tls: Any) -> None:
        self.path, self.tls = path, tls

    def _read(self) -> dict[str, Any]:
        try:
            return connfile.read(self.path)
        except (OSError, ValueError) as exc:
            raise ConnectionClosed(f"cannot read the connection file {self.path}: {exc}") \
                from exc

    def open(self, timeout: float) -> SocketTransport:
        info = self._read()
        link: Link
        if info.get("transport") == "unix":
            link = UnixLink(info["path"])
        else:
            tls = self.tls
            if tls is None and info.get("tls"):
                tls = {"ca": info["ca"]} if info.get("ca") else True
                if isinstance(tls, dict):
                    tls["check_hostname"] = bool(info.get("check_hostname", False))
            link = TcpLink(info["host"], int(info["port"]), tls)
        link.unreachable_after = self.unreachable_after
        return link.open(timeout)

    def token(self) -> str | None:
        return self._read().get("token")


def connect_tcp(host: str, port: int, *, service: Any = VoidService, token: str | None = None,
                tls: Any = None, config: Any = None, timeout: float = 10.0,
                trust_output: bool = False) -> Connection:
    """Connect to ``host``:``port`` over TCP (TLS where ``tls`` asks for it)."""
    make_config(config)
    return _trusted(_finish(TcpLink(host, port, tls), service, token, config, timeout),
                    trust_output)


def _why(exc: OSError, host: str, timeout: float) -> str:
    """Why a TCP connect failed, in the words a user can act on."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no server is listening there)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc.strerror or exc)


def connect_unix(path: str, *, service: Any = VoidService, token: str | None = None,
                 config: Any = None, timeout: float = 10.0,
                 trust_output: bool = False) -> Connection:
    make_config(config)
    return _trusted(_finish(UnixLink(path), service, token, config, timeout), trust_output)


def _finish(link: Link, service: Any, token: str | None, config: Any,
            timeout: float, transport: Transport | None = None) -> Connection:
    """Open the first link (unless given ``transport``, opened already), run the handshake,
    and put the connection on a session that survives the link (net/session.py): a new
    link is opened when this one dies."""
    settings = make_config(config)
    link.unreachable_after = settings.unreachable_after
    if transport is None:
        transport = link.open(timeout)
    try:
        reader = client_handshake(transport, token, timeout)
    except BaseException:
        transport.close()
        raise
    keys = reader.session.keys
    session = ResumableTransport(
        transport, session_id=reader.session.id,
        unreachable_after=settings.unreachable_after, resume_window=settings.resume_window,
        reopen=_reopener(link, token, reader.session.id,
                         keys.resume if keys is not None else None),
        received=reader.decoder.pending, secret=keys.resume if keys is not None else None)
    reader.transport = session
    return Connection(session, service, config, reader=reader)


def _reopener(link: Link, token: str | None, session_id: bytes,
              secret: bytes | None) -> Reopen:
    """How the session gets a new link: the same way as the first, then a resume."""

    def reopen(received: int) -> tuple[Transport, int, bytes]:
        try:
            current_token = link.token() or token  # a restarted server has a new one
        except ConnectionClosed:
            current_token = token
        transport = link.open(RECONNECT_TIMEOUT)
        try:
            reader = client_handshake(transport, current_token, RECONNECT_TIMEOUT,
                                      Resume(session_id, secret, received))
            leftover = reader.decoder.take_unparsed()
        except BaseException:
            transport.close()
            raise
        return transport, reader.session.peer_received, leftover

    return reopen


class _StderrTail:
    """Keeps the last lines a child wrote to stderr, to explain a failed start."""

    def __init__(self, stream: Any, echo: bool) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self._stream = stream
        self._echo = echo
        self._thread = threading.Thread(target=self._pump, daemon=True, name="rk-stderr")
        self._thread.start()

    def wait(self, timeout: float) -> None:
        """Wait until the child's stderr is closed (all of it read), at most ``timeout``."""
        self._thread.join(timeout)

    def _pump(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if self._echo:
                sys.stderr.write(line)

    def text(self) -> str:
        return "".join(self.lines)


def _spawn(argv: list[str], peer: str, service: Any, config: Any, timeout: float,
           missing_hint: str, python: str = "") -> Connection:
    make_config(config)
    try:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise ConnectionClosed(f"cannot start {argv[0]!r}: {exc}") from exc
    tail = _StderrTail(process.stderr, echo=True)
    assert process.stdout is not None and process.stdin is not None
    transport = PipeTransport(os.dup(process.stdout.fileno()), os.dup(process.stdin.fileno()),
                              f"{peer} (pid {process.pid})")
    process.stdout.close()
    process.stdin.close()
    try:
        reader = client_handshake(transport, None, timeout)
    except (RemoteKernelError, OSError) as exc:
        transport.close()
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            process.kill()
        tail.wait(2)
        detail = tail.text().strip()
        if "No module named" in detail and "remote_kernel" in detail:
            raise RemoteKernelError(
                f"{peer} has no remote_kernel package: {missing_hint}"
            ) from exc
        if python and ("No such file or directory" in detail or "not found" in detail) \
                and python in detail:
            raise RemoteKernelError(
                f"{peer} has no Python interpreter {python!r}: pass python= the path of one "
                f"that has remote_kernel installed ({missing_hint})"
            ) from exc
        raise ConnectionClosed(
            f"{peer} did not start a remote_kernel server: {exc}"
            + (f"\n{detail[-2000:]}" if detail else "")
        ) from exc
    conn = Connection(transport, service, config, reader=reader)
    conn.process = process  # type: ignore[attr-defined]
    conn.on_close.append(lambda _conn: _reap(process))
    return conn


def _reap(process: subprocess.Popen) -> None:
    def wait() -> None:
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()

    threading.Thread(target=wait, daemon=True).start()


def connect_subprocess(python: str = sys.executable, *, service: Any = VoidService,
                       config: Any = None, timeout: float = 30.0,
                       args: list[str] | None = None, trust_output: bool = False) -> Connection:
    """Start ``python -m remote_kernel serve --stdio --classic`` and connect over its pipes."""
    argv = [python, "-m", "remote_kernel", "serve", "--stdio", "--classic", *(args or [])]
    return _trusted(_spawn(argv, "subprocess", service, config, timeout,
                           f"run '{python} -m pip install remote_kernel'", python), trust_output)


def connect_ssh(destination: str, python: str = "python3", *, service: Any = VoidService,
                config: Any = None, timeout: float = 30.0, port: int | None = None,
                identity: str | None = None, ssh_options: list[str] | None = None,
                ssh: str = "ssh", trust_output: bool = False,
                deploy: bool = True) -> Connection:
    """Run the server on ``destination`` through the system ssh client (BatchMode: keys or
    an agent, never a password prompt) and talk over its stdin/stdout. No port is opened on
    the far machine.

    With ``deploy`` (the default) the host needs only Python 3.10+: this exact served side
    is sent there when it lacks it, and the session survives a dropped ssh (net/deploy.py).
    ``deploy=False`` runs the host's installed ``python -m remote_kernel``."""
    from remote_kernel.net import deploy as zero_deploy

    if deploy:
        return _trusted(zero_deploy.connect(
            destination, python, service=service, config=config, timeout=timeout, port=port,
            identity=identity, ssh_options=ssh_options, ssh=ssh), trust_output)
    argv = zero_deploy.ssh_argv(destination, port=port, identity=identity,
                                ssh_options=ssh_options, ssh=ssh)
    remote = " ".join(shlex.quote(part) for part in
                      [python, "-m", "remote_kernel", "serve", "--stdio", "--classic"])
    argv.append(remote)
    return _trusted(_spawn(argv, f"ssh:{destination}", service, config, timeout,
                           f"run 'ssh {destination} {python} -m pip install remote_kernel'",
                           python), trust_output)


__all__ = ["Link", "TcpLink", "UnixLink", "FileLink", "connect_file", "connect_ssh",
           "connect_subprocess", "connect_tcp", "connect_unix"]

"""Ways to connect: TCP (+TLS) by address or connection file, unix socket, a child
interpreter over pipes, and ssh."""

from __future__ import annotations

import collections
import difflib
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
from remote_kernel.errors import ConnectionClosed, RemoteKernelError
from remote_kernel.net import connfile
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.tls import client_context
from remote_kernel.net.transports.pipes import PipeTransport
from remote_kernel.net.transports.sockets import SocketTransport


def parse_address(target: str) -> tuple[str, int] | None:
    """"host:port" or "[v6]:port" -> (host, port); None if ``target`` is not one.

    A target shaped like an address whose port is not a port ("localhost:abc",
    "127.0.0.1:99999") is a ``ValueError`` saying so, not a connection-file name."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        if host and rest.startswith(":"):
            return host, _port(rest[1:], target)
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not host or ":" in host or "/" in target or os.sep in target \
            or target.endswith(".json") or connfile.find(target) is not None:
        return None
    return host, _port(port, target)


def _port(text: str, target: str) -> int:
    if not text.isdigit():
        raise ValueError(f"cannot connect to {target!r}: {text!r} is not a port number; "
                         f"use HOST:PORT with a port from 1 to 65535")
    port = int(text)
    if not 0 < port <= 65535:
        raise ValueError(f"cannot connect to {target!r}: port {port} is out of range; "
                         f"use a port from 1 to 65535")
    return port


def connect(target: str, port: int | None = None, *, service: Any = VoidService,
            token: str | None = None, tls: Any = None, config: Any = None,
            timeout: float = 10.0, trust_output: bool = False) -> Connection:
    """Connect to ``target``: "host" with ``port``, "host:port", or a connection file (a
    name written by ``remote-kernel serve`` or a path), which brings host, port, token, TLS.

    ``trust_output=True`` publishes the peer's display output unfiltered in a notebook
    (JavaScript included); by default it is sanitized (see SECURITY.md)."""
    return _trusted(_connect(target, port, service, token, tls, config, timeout), trust_output)


def _trusted(conn: Connection, trust_output: bool) -> Connection:
    conn.trust_output = bool(trust_output)
    return conn


def _connect(target: str, port: int | None, service: Any, token: str | None, tls: Any,
             config: Any, timeout: float) -> Connection:
    make_config(config)
    if port is not None:
        if not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"port {port!r} is not a port number from 1 to 65535")
        return _connect_tcp(target, port, service, token, tls, config, timeout)
    address = parse_address(target)
    if address is not None:
        return _connect_tcp(address[0], address[1], service, token, tls, config, timeout)
    path = connfile.find(target)
    if path is not None:
        return connect_file(path, service=service, token=token, tls=tls, config=config,
                            timeout=timeout)
    if os.path.exists(target) and _is_socket(target):
        return connect_unix(target, service=service, token=token, config=config,
                            timeout=timeout)
    raise ValueError(_unknown_target(target))


def _unknown_target(target: str) -> str:
    """One line: what ``target`` is not, and what would work."""
    names = [str(info.get("name")) for info in connfile.available() if info.get("name")]
    close = difflib.get_close_matches(target, names, n=1)
    if close:
        return f"no connection file named {target!r}: did you mean {close[0]!r}?"
    running = f" (running: {', '.join(names)})" if names else ""
    if target.endswith(".json") or "/" in target or os.sep in target:
        return (f"there is no connection file {target} (a server removes its file when it "
                f"stops): start the server, or give HOST:PORT")
    if not target or any(c.isspace() for c in target):
        return f"cannot connect to {target!r}: it is neither HOST:PORT nor a connection file"
    return (f"no connection file named {target!r}{running}: start a server with "
            f"'remote-kernel serve --name {target}', or give HOST:PORT")


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def connect_file(path: str | Path, *, service: Any = VoidService, token: str | None = None,
                 tls: Any = None, config: Any = None, timeout: float = 10.0,
                 trust_output: bool = False) -> Connection:
    info = connfile.read(Path(path))
    token = token or info.get("token")
    try:
        if info.get("transport") == "unix":
            conn = connect_unix(info["path"], service=service, token=token, config=config,
                                timeout=timeout)
        else:
            if tls is None and info.get("tls"):
                tls = {"ca": info["ca"]} if info.get("ca") else True
                if isinstance(tls, dict):
                    tls["check_hostname"] = bool(info.get("check_hostname", False))
            conn = _connect_tcp(info["host"], int(info["port"]), service, token, tls, config,
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


def _connect_tcp(host: str, port: int, service: Any, token: str | None, tls: Any,
                 config: Any, timeout: float) -> Connection:
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ConnectionClosed(f"cannot connect to {peer}: {_why(exc, host, timeout)}") \
            from exc
    context, server_name = client_context(tls)
    if context is not None:
        import ssl

        try:
            sock = context.wrap_socket(sock, server_hostname=server_name or host)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            from remote_kernel.errors import AuthenticationError
            from remote_kernel.net.tls import explain_ssl_error

            raise AuthenticationError(
                f"TLS handshake with {peer} failed: {explain_ssl_error(exc)}"
            ) from exc
    return _finish(SocketTransport(sock, peer), service, token, config, timeout)


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise ConnectionClosed(f"cannot connect to {path}: {exc.strerror or exc}") from exc
    return _trusted(_finish(SocketTransport(sock, path), service, token, config, timeout),
                    trust_output)


def _finish(transport: Any, service: Any, token: str | None, config: Any,
            timeout: float) -> Connection:
    try:
        reader = client_handshake(transport, token, timeout)
    except BaseException:
        transport.close()
        raise
    return Connection(transport, service, config, reader=reader)


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
                ssh: str = "ssh", trust_output: bool = False) -> Connection:
    """Run the server on ``destination`` through the system ssh client (BatchMode: keys or
    an agent, never a password prompt) and talk over its stdin/stdout. No port is opened on
    the far machine."""
    if not destination or destination.startswith("-") or any(c.isspace() for c in destination):
        # "-oProxyCommand=..." would be an option to the local ssh: a local command.
        raise ValueError(f"not an ssh destination: {destination!r}")
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-T"]
    if port is not None:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity]
    argv += list(ssh_options or [])
    remote = " ".join(shlex.quote(part) for part in
                      [python, "-m", "remote_kernel", "serve", "--stdio", "--classic"])
    argv += ["--", destination, remote]
    return _trusted(_spawn(argv, f"ssh:{destination}", service, config, timeout,
                           f"run 'ssh {destination} {python} -m pip install remote_kernel'",
                           python), trust_output)


__all__ = ["connect", "connect_file", "connect_ssh", "connect_subprocess", "connect_unix",
           "parse_address"]

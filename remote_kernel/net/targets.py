"""What a target names and how it opens: the one place that reads the string a user gives
``rk.connect``, ``rk.Group``, ``%remote connect`` and the proxy kernel.

A target is, first match wins:

    "subprocess"              a child interpreter of this Python, over its pipes
    "ssh:DESTINATION"         ``ssh DESTINATION python3 -m remote_kernel serve --stdio``
    "HOST:PORT", "[V6]:PORT"  TCP (TLS where asked); a connection file of that name wins
    a connection file         a name ``remote-kernel serve --name`` wrote, or a path to one
    a unix socket             the path of a listening socket
    anything else             a name: an error, or (``discover=True``, the notebook) a server
                              advertised on the local network under it

``parse`` turns the string into a :class:`Target` (it raises only for a malformed port),
``Target.member_name`` and ``Target.variable_name`` name it, ``open_target`` opens it through
the connect functions of net/client.py, ``read_token_file`` reads a ``--token-file``.
"""

from __future__ import annotations

import difflib
import keyword
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from remote_kernel.config import make_config
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import VoidService
from remote_kernel.errors import AuthenticationError, ConnectionClosed, RemoteKernelError
from remote_kernel.net import connfile
from remote_kernel.net.client import (
    connect_file,
    connect_ssh,
    connect_subprocess,
    connect_tcp,
    connect_unix,
)

log = logging.getLogger("remote_kernel.net")

Kind = Literal["subprocess", "ssh", "address", "file", "unix", "name"]

SUBPROCESS = "subprocess"
SSH_PREFIX = "ssh:"


@dataclass(frozen=True)
class Target:
    """A parsed target. ``text`` is what the user wrote; the other fields hold what its
    ``kind`` needs: ``host``/``port`` (address), ``path`` (file, unix), ``destination``
    (ssh)."""

    text: str
    kind: Kind
    host: str = ""
    port: int = 0
    path: str = ""
    destination: str = ""

    @property
    def member_name(self) -> str:
        """Its name in a group: the connection file's name, the ssh host, or the target
        itself (``host:port``, a name)."""
        if self.kind == "ssh":
            return self.destination.rpartition("@")[2] or self.text
        if self.kind != "address" and (self.text.endswith(".json") or "/" in self.text):
            stem = Path(self.text).name.removesuffix(".json")
            return stem.removeprefix(connfile.PREFIX) or self.text
        return self.text

    @property
    def variable_name(self) -> str:
        """The notebook variable a connection to it is bound to by default: a Python
        identifier ("sub", the ssh host, "remote" for an address, the file's name)."""
        if self.kind == "subprocess":
            base = "sub"
        elif self.kind == "ssh":
            base = self.destination.rpartition("@")[2]
        elif self.kind == "address":
            base = "remote"
        elif self.text.endswith(".json"):
            base = self.text.rsplit("/", 1)[-1][:-5].removeprefix(connfile.PREFIX)
        else:
            base = self.text.rsplit("/", 1)[-1]
        base = re.sub(r"\W", "_", base) or "remote"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = f"r_{base}"
        return base


def parse(target: str, port: int | None = None) -> Target:
    """What ``target`` names (with ``port``: a host). Looks for connection files and
    sockets; raises ``ValueError`` only for a port that is not one."""
    if port is not None:
        if not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"port {port!r} is not a port number from 1 to 65535")
        return Target(target, "address", host=target, port=port)
    if target == SUBPROCESS:
        return Target(target, "subprocess")
    if target.startswith(SSH_PREFIX):
        return Target(target, "ssh", destination=target[len(SSH_PREFIX):])
    address = parse_address(target)
    if address is not None:
        return Target(target, "address", host=address[0], port=address[1])
    path = connfile.find(target)
    if path is not None:
        return Target(target, "file", path=str(path))
    if os.path.exists(target) and _is_socket(target):
        return Target(target, "unix", path=target)
    # A bare name nothing here knows. The deploy engineer's "bare host -> ssh with
    # zero-deploy" fallback belongs here: a kind of its own, opened in open_target.
    return Target(target, "name")


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


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _path_like(target: str) -> bool:
    return target.endswith(".json") or "/" in target or os.sep in target


def unknown_target(target: str) -> str:
    """One line: what ``target`` is not, and what would work."""
    names = [str(info.get("name")) for info in connfile.available() if info.get("name")]
    close = difflib.get_close_matches(target, names, n=1)
    if close:
        return f"no connection file named {target!r}: did you mean {close[0]!r}?"
    running = f" (running: {', '.join(names)})" if names else ""
    if _path_like(target):
        return (f"there is no connection file {target} (a server removes its file when it "
                f"stops): start the server, or give HOST:PORT")
    if not target or any(c.isspace() for c in target):
        return f"cannot connect to {target!r}: it is neither HOST:PORT nor a connection file"
    return (f"no connection file named {target!r}{running}: start a server with "
            f"'remote-kernel serve --name {target}', or give HOST:PORT")


# -- token files ---------------------------------------------------------------------------

MAX_TOKEN_FILE = 4096  # bytes; a token is one line (``serve`` makes 43 characters)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``: its text without surrounding whitespace. ``ValueError`` in one
    line when it cannot be read, is not text, is larger than a token file can be, or is
    empty (an empty token must never mean "no authentication"). A pipe works
    (``--token-file <(pass show lab)``): it is read, never stat'ed for its size."""
    shown = str(path)
    try:
        with open(Path(path).expanduser(), "rb") as handle:
            raw = handle.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the token file {shown}: {exc.strerror or exc}") \
            from exc
    if len(raw) > MAX_TOKEN_FILE:
        raise ValueError(f"the token file {shown} is larger than {MAX_TOKEN_FILE} bytes; it "
                         f"should hold one token")
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        raise ValueError(f"the token file {shown} is not text (UTF-8)") from None
    if not token:
        raise ValueError(f"the token file {shown} is empty")
    return token


# -- opening ---------------------------------------------------------------------------------


def connect(target: str, port: int | None = None, *, service: Any = VoidService,
            token: str | None = None, tls: Any = None, config: Any = None,
            timeout: float = 10.0, trust_output: bool = False) -> Connection:
    """Connect to ``target``: "host" with ``port``, "host:port", a connection file (a name
    written by ``remote-kernel serve`` or a path), which brings host, port, token, TLS, a
    unix socket path, ``ssh:user@host`` or ``subprocess``.

    ``trust_output=True`` publishes the peer's display output unfiltered in a notebook
    (JavaScript included); by default it is sanitized (see SECURITY.md)."""
    make_config(config)  # a wrong key is the first thing said
    return open_target(parse(target, port), service=service, token=token, tls=tls,
                       config=config, timeout=timeout, trust_output=trust_output)


def open_target(target: Target, *, service: Any = VoidService, token: str | None = None,
                tls: Any = None, config: Any = None, timeout: float = 10.0,
                trust_output: bool = False, discover: bool = False) -> Connection:
    """Open ``target``. ``token`` and ``tls`` apply to TCP and unix sockets (a connection
    file brings its own unless given); a child or an ssh login gets its own 30 s to start.
    ``discover=True`` looks a name up among the servers advertised on the local network,
    connecting with this ``tls`` (never the advertised one)."""
    conn: Connection
    if target.kind == "subprocess":
        conn = connect_subprocess(service=service, config=config)
    elif target.kind == "ssh":
        conn = connect_ssh(target.destination, service=service, config=config)
    elif target.kind == "address":
        conn = connect_tcp(target.host, target.port, service=service, token=token, tls=tls,
                           config=config, timeout=timeout)
    elif target.kind == "file":
        conn = connect_file(target.path, service=service, token=token, tls=tls,
                            config=config, timeout=timeout)
    elif target.kind == "unix":
        conn = connect_unix(target.path, service=service, token=token, config=config,
                            timeout=timeout)
    else:
        cause = ValueError(unknown_target(target.text))
        if not discover or _path_like(target.text):  # no host or server has such a name
            raise cause
        conn = _open_advertised(target.text, service, token, tls, config, timeout, cause)
    conn.trust_output = bool(trust_output)
    return conn


# -- servers advertised on the network (DNS-SD) -----------------------------------------------

DISCOVERY_TIMEOUT = 2.0  # seconds `%remote connect NAME` listens for NAME on the network


def discovery_module() -> Any:
    """``remote_kernel.net.discovery``, or None where it (or zeroconf) is not installed."""
    try:
        from remote_kernel.net import discovery
    except ImportError:
        return None
    return discovery


def find_discovered(name: str, timeout: float = DISCOVERY_TIMEOUT) -> Any:
    """The server advertised on the local network as ``name`` (a ServerInfo), or None."""
    discovery = discovery_module()
    if discovery is None or not name or "/" in name or name.endswith(".json"):
        return None
    try:
        servers = discovery.discover(timeout)
    except Exception as exc:  # no network for mDNS: as if nothing was found
        log.debug("discovery failed: %s", exc)
        return None
    for server in servers:
        if server.name == name:
            return server
    for server in servers:
        if server.name.casefold() == name.casefold():
            return server
    return None


def _open_advertised(name: str, service: Any, token: str | None, tls: Any, config: Any,
                     timeout: float, cause: ValueError) -> Connection:
    return connect_name(name, service=service, token=token, tls=tls, config=config,
                        timeout=timeout, cause=cause)


def connect_name(name: str, *, service: Any = VoidService, token: str | None = None,
                 tls: Any = None, config: Any = None, timeout: float = 10.0,
                 discover_for: float = DISCOVERY_TIMEOUT, cause: Exception | None = None,
                 python: str = "python3") -> Connection:
    """A bare name that is no connection file: a server advertised under it on the local
    network, else the host of that name through ssh with zero-deploy (net/deploy.py, so
    ssh config aliases, keys and jump hosts apply). When none works, one line names the
    three things tried and why each failed."""
    tried = [str(cause or unknown_target(name))]
    server = find_discovered(name, discover_for)
    if server is not None:  # (it must prove the token: no fall-through to ssh after that)
        return connect_advertised(server, token, service, cause or ValueError(tried[0]), tls,
                                  config=config, timeout=timeout)
    tried.append(f"no server advertised as {name!r}" if discovery_module() is not None
                 else "no discovery here (zeroconf is not installed)")
    from remote_kernel.net import deploy

    try:
        return deploy.connect(name, python, service=service, config=config,
                              timeout=max(timeout, 30.0), echo_stderr=False)
    except (RemoteKernelError, ValueError) as exc:
        tried.append(f"ssh {name} failed ({str(exc).splitlines()[0] if str(exc) else exc})")
    raise ConnectionClosed(f"cannot connect to {name!r}: " + "; ".join(tried))


def connect_advertised(server: Any, token: str | None, service: Any, cause: Exception,
                       tls: Any = None, *, config: Any = None,
                       timeout: float = 10.0) -> Connection:
    """Connect to a discovered server. TLS is what the user said (``tls``), never what the
    advertisement says: an impostor advertising ``tls=0`` for a TLS server and relaying
    to it fails the handshake (its transcript binds each side's TLS or plain channel, see
    net/auth.py), as does any advertised server that cannot prove it knows the token."""
    where = f"{server.name} at {server.host}:{server.port} (advertised)"
    try:
        return connect_tcp(server.host, server.port, service=service, token=token, tls=tls,
                           config=config, timeout=timeout)
    except AuthenticationError as exc:
        if token:  # a wrong token and a relay that changes the channel look the same
            hint = "; it advertises TLS, this connection did not ask for TLS" \
                if server.tls and not tls else ""
            raise AuthenticationError(f"{where} could not prove it knows your token; not "
                                      f"connected ({exc}{hint})") from cause
        where = f"{server.name} was found on the network at {server.host}:{server.port}"
        raise AuthenticationError(f"{where} but needs its token (the network never carries "
                                  f"it): %remote connect {server.name} --token-file FILE"
                                  ) from cause


__all__ = ["DISCOVERY_TIMEOUT", "MAX_TOKEN_FILE", "Kind", "Target", "connect",
           "connect_advertised", "connect_name", "discovery_module", "find_discovered", "open_target", "parse",
           "parse_address", "read_token_file", "unknown_target"]

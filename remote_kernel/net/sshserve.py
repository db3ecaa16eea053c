"""The device's side of zero-deploy over ssh (net/deploy.py is the notebook's side).

``ssh-serve`` starts a server that outlives the ssh session: it listens on a unix socket in
a new private directory (0700) and runs detached from ssh, while the process ssh started
only bridges ssh's stdin/stdout to that socket. When ssh drops, the bridge exits and closes
the socket in order; the server keeps the session (net/session.py) and the notebook
resumes it through a new ssh running ``bridge``. The server serves that one session and
exits when it closes or its resume window ends, removing the socket and the directory.

Before the protocol starts, the ssh channel carries lines that begin with ``rk-``:
``rk-ready {"socket": PATH}`` (bridged from here on) or ``rk-gone REASON`` (the server is
not there any more). A protocol stream never starts with "r" (its first byte is the high
byte of a small frame length).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from remote_kernel.net.auth import SessionTable

log = logging.getLogger("remote_kernel.net.sshserve")
FIRST_CONNECTION_TIMEOUT = 60.0  # a server nobody connects to gives up after this
READY_TIMEOUT = 30.0
CHUNK = 256 << 10


def add_parsers(sub: Any) -> None:
    serve = sub.add_parser("ssh-serve", help="(zero-deploy) serve one session through a "
                                             "detached server; bridge stdio to it")
    serve.add_argument("--service", metavar="MODULE:CLASS",
                       help="serve this Service class (default: classic)")
    serve.set_defaults(func=cmd_ssh_serve)
    bridge = sub.add_parser("bridge", help="(zero-deploy) bridge stdio to a running server")
    bridge.add_argument("socket", help="the server's unix socket")
    bridge.set_defaults(func=cmd_bridge)


def _private_directory() -> str:
    """A new 0700 directory for the socket: the user's runtime directory where there is
    one (short paths: a unix socket's path is limited to about 100 bytes)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or len(base) > 60:
        base = None
    return tempfile.mkdtemp(prefix="remote-kernel-", dir=base)


def cmd_ssh_serve(args: argparse.Namespace) -> int:
    from remote_kernel.net.serve_main import _load_service

    service = _load_service(args.service, not args.service)
    directory = _private_directory()
    path = os.path.join(directory, "socket")
    ready_read, ready_write = os.pipe()
    pid = os.fork()  # before any thread: the child becomes the server
    if pid == 0:
        os.close(ready_read)
        _become_daemon(directory)
        code = 1
        try:
            code = _serve_session(service, directory, path, ready_write)
        finally:
            os._exit(code)
    os.close(ready_write)
    if not _wait_ready(ready_read, READY_TIMEOUT):
        _say(f"rk-gone the server did not start{_log_tail(directory)}")
        shutil.rmtree(directory, ignore_errors=True)
        return 1
    return _bridge(path)


def _become_daemon(directory: str) -> None:
    """Leave ssh's session and pipes: ssh ends when the bridge ends, not when we do."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    logfile = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(logfile, 2)
    os.close(null)
    os.close(logfile)


def _wait_ready(fd: int, timeout: float) -> bool:
    import select

    readable, _, _ = select.select([fd], [], [], timeout)
    ok = bool(readable) and os.read(fd, 1) == b"1"
    os.close(fd)
    return ok


def _log_tail(directory: str) -> str:
    try:
        with open(os.path.join(directory, "log"), errors="replace") as handle:
            text = handle.read().strip().splitlines()
    except OSError:
        return ""
    return f": {text[-1]}" if text else ""


def _serve_session(service: Any, directory: str, path: str, ready: int) -> int:
    """Serve the first session (and its resumes) until it ends; then remove everything."""
    from remote_kernel.net.server import Server

    server = None
    try:
        server = Server(service, unix_path=path)
        sessions = server.sessions = _WatchedSessions()
        os.write(ready, b"1")
        os.close(ready)
        server.serve_in_background()
        started = time.monotonic()
        while True:
            busy = bool(server.connections) or len(sessions) > 0
            # A session added is only removed when it closed (or its window ended).
            if not busy and (sessions.began.is_set()
                             or time.monotonic() - started > FIRST_CONNECTION_TIMEOUT):
                return 0
            time.sleep(0.2)
    except Exception:
        log.exception("the detached server failed")
        return 1
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(directory, ignore_errors=True)


class _WatchedSessions(SessionTable):
    """The server's session table, noting that a session began (however short it was)."""

    def __init__(self) -> None:
        super().__init__()
        self.began = threading.Event()

    def add(self, session_id: bytes, session: Any) -> None:
        # Its clients come through the ssh bridge, whose end of stream is not theirs:
        # the session is kept for a resume over a new ssh connection (net/session.py).
        session.bridged = True
        super().add(session_id, session)
        self.began.set()


def cmd_bridge(args: argparse.Namespace) -> int:
    return _bridge(args.socket)


def _say(line: str) -> None:
    os.write(1, (line.replace("\n", " ") + "\n").encode())


def _bridge(path: str) -> int:
    """Pump stdin to the server's socket and the socket to stdout until either ends."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        _say(f"rk-gone {path}: {exc.strerror or exc}")
        return 1
    _say("rk-ready " + json.dumps({"socket": path}))
    done = threading.Event()

    def inbound() -> None:  # ssh -> server
        try:
            while True:
                data = os.read(0, CHUNK)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            done.set()
            try:  # wakes the other direction; an orderly end: the server keeps the session
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # Each direction has its own thread: a full pipe one way never stalls the other.
    threading.Thread(target=inbound, daemon=True).start()
    try:
        while not done.is_set():
            data = sock.recv(CHUNK)
            if not data:
                break
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    sys.stdout.flush()
    return 0


__all__ = ["add_parsers", "cmd_bridge", "cmd_ssh_serve"]

"""Zero-deploy over ssh: the notebook's side (net/sshserve.py is the device's).

One ssh command runs a small bootstrap with the host's ``python3 -I``. It looks for this
exact bundle (net/bundle.py) in ``~/.cache/remote-kernel/<version>-<hash>.pyz``. That
folder must be a real directory of the user's (never a symbolic link, never another user's:
refused with one line) and is made 0700. The bundle is opened without following a link or
waiting on a FIFO, must be a regular file of the user's that only the user can write, and is
hashed from that descriptor; if it is intact, python runs that same descriptor
(``/dev/fd/N``), so the bytes run are the bytes checked, and it starts at once (one ssh round
trip). If not, the bootstrap asks for it (``rk-send``), reads exactly its bytes from the ssh
channel, checks the hash, and writes it atomically (a 0600 file under a random temporary name,
then a rename), so a corrupted, half-written or planted copy is replaced. Nothing else on the
host is touched.

The bundle then serves through a detached server on a private unix socket (``ssh-serve``):
when ssh drops, the session is resumed through a new ssh that only bridges (``bridge``), the
``SshLink`` below being what net/session.py reopens.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import subprocess
import time
from typing import Any

from remote_kernel import __version__
from remote_kernel.core.connection import Connection
from remote_kernel.core.service import VoidService
from remote_kernel.errors import ConnectionClosed, RemoteKernelError
from remote_kernel.net import bundle
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.client import Link, _finish, _StderrTail
from remote_kernel.net.transports.pipes import PipeTransport

CACHE = "~/.cache/remote-kernel"
START_TIMEOUT = 15.0  # an ssh login and a Python start, at least (a reconnect too)

# Runs on the host as ``python3 -I -c BOOTSTRAP NAME SHA256 SIZE COMMAND...``.
BOOTSTRAP = """\
import hashlib, os, stat, sys
if sys.version_info < (3, 10):
    sys.exit("remote-kernel: the host's Python is %s; the bundle needs 3.10 or newer"
             % sys.version.split()[0])
name, digest, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
uid = os.getuid()
parent = os.path.join(os.path.expanduser("~"), ".cache")
where = os.path.join(parent, "remote-kernel")
def folder(path, shown, flags, at=None):
    # A directory of this user's (made 0700 when missing), never a link or another's.
    try:
        os.mkdir(path, 0o700, dir_fd=at)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | flags, dir_fd=at)
        why = "another user's" if os.fstat(fd).st_uid != uid else None
    except OSError as exc:
        why = "a symbolic link" if os.path.islink(shown) else exc.strerror
    if why:
        sys.exit("remote-kernel: refusing the cache %s (%s): remove it "
                 "(remote-kernel clean) and connect again" % (shown, why))
    return fd
def cached(at):
    # A descriptor on the cached bundle once its bytes are checked, else None.
    try:  # not a FIFO's writer, a device's terminal or a link's target
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                     dir_fd=at)
    except OSError:
        return None
    info, hashed = os.fstat(fd), hashlib.sha256()
    if (stat.S_ISREG(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o022
            and info.st_size == size):
        for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
            hashed.update(chunk)
        if hashed.hexdigest() == digest:
            return fd
    os.close(fd)
    return None
def receive(at):
    os.write(1, b"rk-send\\n")
    data = bytearray()
    while len(data) < size:
        chunk = os.read(0, min(1 << 20, size - len(data)))
        if not chunk:
            sys.exit("remote-kernel: the bundle did not arrive whole")
        data += chunk
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit("remote-kernel: the bundle arrived corrupted")
    temporary = "%s.%s.tmp" % (name, os.urandom(8).hex())
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                 dir_fd=at)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    os.replace(temporary, name, src_dir_fd=at, dst_dir_fd=at)
    return fd
try:
    cache = folder("remote-kernel", where, os.O_NOFOLLOW, folder(parent, parent, 0))
    if stat.S_IMODE(os.fstat(cache).st_mode) != 0o700:
        os.fchmod(cache, 0o700)
    fd = cached(cache)
    if fd is None:
        fd = receive(cache)
except OSError as exc:
    sys.exit("remote-kernel: the cache %s: %s" % (where, exc))
# Run exactly the bytes checked: this descriptor (the bundle's imports read it again).
os.lseek(fd, 0, 0)
os.set_blocking(fd, True)
os.set_inheritable(fd, True)
run = "/dev/fd/%d" % fd
if not os.path.exists(run):  # a host without /dev/fd: the checked file, in our 0700 folder
    run = os.path.join(where, name)
os.execv(sys.executable, [sys.executable, "-I", run] + sys.argv[4:])
"""

CLEAN = """\
import os, shutil
folder = os.path.join(os.path.expanduser("~"), ".cache", "remote-kernel")
if os.path.islink(folder):  # the link only, never what it points to
    os.unlink(folder)
    print("removed %s (a symbolic link)" % folder)
else:
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    shutil.rmtree(folder, ignore_errors=True)
    print("removed %s (%d file%s)" % (folder, len(names), "" if len(names) == 1 else "s")
          if names else "nothing to remove: %s does not exist" % folder)
"""


def cached_name() -> str:
    """The bundle's file name in the host's cache: this version, this exact source."""
    return f"{__version__}-{bundle.cached()[1][:16]}.pyz"


def ssh_argv(destination: str, *, port: int | None = None, identity: str | None = None,
             ssh_options: list[str] | None = None, ssh: str = "ssh") -> list[str]:
    """The local ssh command up to and including the destination (BatchMode: keys or an
    agent, never a password prompt)."""
    if not destination or destination.startswith("-") or any(c.isspace() for c in destination):
        # "-oProxyCommand=..." would be an option to the local ssh: a local command.
        raise ValueError(f"not an ssh destination: {destination!r}")
    # ssh notices a silent link itself (about 10 s: the default unreachable_after), and a
    # host that does not answer is given up after 10 s.
    argv = [ssh, "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5", "-o",
            "ServerAliveCountMax=2", "-o", "ConnectTimeout=10", "-T"]
    if port is not None:
        argv += ["-p", str(port)]
    if identity:
        argv += ["-i", identity]
    return [*argv, *(ssh_options or []), "--", destination]


class _Pushback(PipeTransport):
    """A pipe whose first bytes were already read (a server that spoke at once)."""

    prefix = b""

    def recv_into(self, buffer: memoryview, timeout: float | None) -> int:
        if self.prefix:
            got = min(len(buffer), len(self.prefix))
            buffer[:got] = self.prefix[:got]
            self.prefix = self.prefix[got:]
            return got
        return super().recv_into(buffer, timeout)

    def has_buffered_data(self) -> bool:
        return bool(self.prefix) or super().has_buffered_data()


class SshLink(Link):
    """The served side on an ssh host: first ``ssh-serve`` (deploying the bundle when the
    host lacks it), then, for each resume, ``bridge`` to the same detached server."""

    def __init__(self, argv: list[str], destination: str, python: str,
                 service: str | None = None, echo_stderr: bool = True) -> None:
        self.argv, self.destination, self.python = argv, destination, python
        self.echo_stderr = echo_stderr  # ssh's own messages also go to our stderr
        self.service = service
        self.socket: str | None = None
        self.sent_bundle: bool | None = None  # the first open sent it (False: it was cached)
        self.direct = False  # the host ran a server of its own (an sshd ForceCommand)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.tail: _StderrTail | None = None

    def command(self) -> str:
        data, digest = bundle.cached()
        if self.socket is None:
            args = ["ssh-serve", *(["--service", self.service] if self.service else [])]
        else:
            args = ["bridge", self.socket]
        return " ".join(shlex.quote(part) for part in
                        [self.python, "-I", "-c", BOOTSTRAP, cached_name(), digest,
                         str(len(data)), *args])

    def open(self, timeout: float) -> PipeTransport:
        self.reap()
        try:
            process = subprocess.Popen([*self.argv, self.command()], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
        except OSError as exc:
            raise ConnectionClosed(f"cannot start {self.argv[0]!r}: {exc}") from exc
        self.processes.append(process)
        self.tail = _StderrTail(process.stderr, echo=self.echo_stderr)
        assert process.stdout is not None and process.stdin is not None
        transport = _Pushback(os.dup(process.stdout.fileno()), os.dup(process.stdin.fileno()),
                              f"ssh:{self.destination} (pid {process.pid})")
        process.stdout.close()
        process.stdin.close()
        try:
            self._preamble(transport, max(timeout, START_TIMEOUT))
        except BaseException:
            transport.close()
            self._stop(process)
            raise
        return transport

    def _preamble(self, transport: _Pushback, timeout: float) -> None:
        """Read the ``rk-`` lines before the protocol; send the bundle when asked."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(transport, deadline)
            if line is None:  # the protocol already: a server the host started itself
                self.direct = True
                return
            if line == "rk-send":
                self.sent_bundle = True
                transport.send(bundle.cached()[0], max(1.0, deadline - time.monotonic()))
            elif line.startswith("rk-ready "):
                if self.sent_bundle is None:
                    self.sent_bundle = False
                self.socket = json.loads(line[len("rk-ready "):])["socket"]
                return
            elif line.startswith("rk-gone"):
                gone = FileNotFoundError(line[len("rk-gone "):])  # ends the session at once
                raise ConnectionClosed(f"ssh:{self.destination}: the server is not running "
                                       f"any more ({gone})") from gone
            else:
                raise ConnectionClosed(f"ssh:{self.destination} said {line[:200]!r} before "
                                       "the protocol")

    def _line(self, transport: _Pushback, deadline: float) -> str | None:
        raw = b""
        while not raw.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([transport.read_fd], [], [], left)[0]:
                raise ConnectionClosed(f"ssh:{self.destination} did not start the server "
                                       f"within {deadline - time.monotonic() + left:.0f} s")
            byte = os.read(transport.read_fd, 1)
            if not byte:
                raise ConnectionClosed(f"ssh:{self.destination} ended before the server "
                                       f"started{self._detail()}")
            if not raw and byte != b"r":
                transport.prefix = byte
                return None
            raw += byte
            if len(raw) > 4096:
                raise ConnectionClosed(f"ssh:{self.destination} sent a line too long")
        return raw.decode(errors="replace").strip()

    def _detail(self) -> str:
        if self.tail is None:
            return ""
        self.tail.wait(2)
        text = self.tail.text().strip()
        return f": {text[-2000:]}" if text else ""

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()

    def reap(self) -> None:
        """Collect the ssh processes that ended; keep the live one."""
        self.processes = [p for p in self.processes if p.poll() is None]

    def close(self) -> None:
        for process in self.processes:
            try:
                process.wait(3)  # its stdin closed: ssh ends by itself
            except subprocess.TimeoutExpired:
                self._stop(process)
        self.processes = []


def connect(destination: str, python: str = "python3", *, service: Any = VoidService,
            config: Any = None, timeout: float = 30.0, port: int | None = None,
            identity: str | None = None, ssh_options: list[str] | None = None,
            ssh: str = "ssh", served: str | None = None,
            echo_stderr: bool = True) -> Connection:
    """``connect_ssh`` with zero-deploy: serve ``destination`` with this exact served side,
    sent there first when it lacks it. ``served`` is the far side's --service
    (MODULE:CLASS), classic by default. ``echo_stderr=False``: ssh's messages only in the
    error (a bare name tried as a host, see net/targets.py)."""
    link = SshLink(ssh_argv(destination, port=port, identity=identity,
                            ssh_options=ssh_options, ssh=ssh), destination, python, served,
                   echo_stderr)
    started = time.monotonic()
    try:
        transport = link.open(timeout)
    except ConnectionClosed as exc:
        raise _explained(exc, destination, python) from exc
    try:
        if link.direct:
            reader = client_handshake(transport, None, timeout)
            conn = Connection(transport, service, config, reader=reader)
        else:
            conn = _finish(link, service, None, config, timeout, transport)
    except BaseException:
        transport.close()
        link.close()
        raise
    conn.process = link.processes[-1]  # type: ignore[attr-defined]
    conn.deployed = {  # type: ignore[attr-defined]
        "sent": link.sent_bundle, "seconds": time.monotonic() - started,
        "cache": f"{CACHE}/{cached_name()}", "socket": link.socket}
    conn.on_close.append(lambda _conn: _close_later(link))
    return conn


def _close_later(link: SshLink) -> None:
    import threading

    threading.Thread(target=link.close, daemon=True, name="rk-ssh-reap").start()


def _explained(exc: ConnectionClosed, destination: str, python: str) -> RemoteKernelError:
    text = str(exc)
    if python in text and ("No such file" in text or "not found" in text):
        return RemoteKernelError(f"ssh:{destination} has no Python interpreter {python!r}: "
                                 "pass python= the path of a Python 3.10 or newer there")
    return exc


def clean(destination: str, python: str = "python3", **ssh: Any) -> str:
    """Remove zero-deploy's cache on ``destination``; what was removed, in one line."""
    argv = ssh_argv(destination, **ssh)
    command = " ".join(shlex.quote(part) for part in [python, "-I", "-c", CLEAN])
    try:
        done = subprocess.run([*argv, command], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteKernelError(f"ssh:{destination}: {exc}") from exc
    if done.returncode != 0:
        raise RemoteKernelError(f"ssh:{destination}: {done.stderr.strip()[-500:]}")
    return f"ssh:{destination}: {done.stdout.strip()}"


__all__ = ["SshLink", "clean", "connect", "ssh_argv"]

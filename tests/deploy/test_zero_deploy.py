"""Zero-deploy over ssh against a real sshd on loopback, whose target interpreter is the
system /usr/bin/python3 (no remote_kernel, no msgpack). The ssh session's HOME is a
temporary folder (sshd SetEnv), so the cache under test is the test's own."""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import remote_kernel as rk
from remote_kernel.net import bundle, deploy, targets
from tests.conftest import ROOT
from tests.hardening.test_ssh import SSHD, Sshd

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(SSHD) or not os.path.exists("/usr/bin/ssh"),
                       reason="openssh-server and openssh-client are needed"),
    pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-I", "-c", "import msgpack"],
                                      capture_output=True).returncode == 0,
                       reason="/usr/bin/python3 has msgpack: not a bare host"),
]

SYSTEM_PYTHON = "/usr/bin/python3"
TIMES: dict[str, float] = {}

# How a printed traceback shows the remote frames: a PEP 678 note, or on Python 3.10 (which
# prints no notes) a chained RemoteTraceback cause (README, "Remote errors").
REMOTE_TRACEBACK = re.compile(r"Remote traceback|RemoteTraceback")


class Host:
    """An sshd whose sessions have HOME=home and PATH=/usr/bin:/bin (python3 is the
    system one), and ssh aliases pi1..pi3 for it (a wrapper ``ssh`` first on PATH)."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.home.mkdir()
        (root / "sshd").mkdir()
        self.sshd = Sshd(root / "sshd", extra_config=[f"SetEnv HOME={self.home} "
                                                      "PATH=/usr/bin:/bin"])
        config = root / "ssh_config"
        config.write_text(f"Host pi1 pi2 pi3\n  HostName 127.0.0.1\n  Port {self.sshd.port}\n"
                          f"  User {getpass.getuser()}\n  IdentityFile {self.sshd.identity}\n"
                          "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                          "  LogLevel ERROR\n")
        self.bin = root / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        self.cache = self.home / ".cache" / "remote-kernel"

    def connect(self, **kwargs: object) -> rk.Connection:
        sshd = self.sshd
        return rk.connect_ssh(f"{sshd.user}@127.0.0.1", python=SYSTEM_PYTHON, port=sshd.port,
                              identity=str(sshd.identity), ssh_options=sshd.options(),
                              **kwargs)  # type: ignore[arg-type]

    def cached(self) -> Path:
        return self.cache / deploy.cached_name()

    def forget(self) -> None:
        if self.cache.exists():
            for child in self.cache.iterdir():
                child.unlink()
            self.cache.rmdir()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    made = Host(tmp_path_factory.mktemp("host"))
    yield made
    made.sshd.stop()


@pytest.fixture
def aliases(host: Host, monkeypatch: pytest.MonkeyPatch) -> Host:
    monkeypatch.setenv("PATH", f"{host.bin}{os.pathsep}{os.environ['PATH']}")
    return host


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_first_connect_deploys_and_the_second_reuses_the_cache(host: Host) -> None:
    host.forget()
    bundle.cached()  # built once per process: the times below are ssh's and the host's
    started = time.monotonic()
    with host.connect() as conn:
        TIMES["first"] = time.monotonic() - started
        assert conn.deployed["sent"] is True  # type: ignore[attr-defined]
        assert conn.modules.sys.executable == SYSTEM_PYTHON
        assert conn.eval("__import__('sys').flags.isolated") == 1  # python3 -I
        assert conn.eval("__import__('msgpack').Packer.__module__") == "msgpack.fallback"
        assert conn.modules.os.path.join("a", "b") == "a/b"  # a classic netref
        conn.execute("def fails():\n    raise ValueError('on the host')\n")
        with pytest.raises(ValueError, match="on the host") as info:
            conn.eval("fails()")
        import traceback

        text = "".join(traceback.format_exception(info.value))
        assert REMOTE_TRACEBACK.search(text) and "fails" in text
    cached = host.cached()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(host.cache.stat().st_mode) == 0o700
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == bundle.cached()[1]
    assert sorted(os.listdir(host.cache)) == [cached.name]  # nothing else, no temporary
    before = cached.stat().st_mtime_ns
    started = time.monotonic()
    with host.connect() as conn:
        TIMES["second"] = time.monotonic() - started
        assert conn.deployed["sent"] is False  # type: ignore[attr-defined]
        assert conn.eval("6 * 7") == 42
        server_pid = conn.modules.os.getpid()
        socket_path = Path(conn.deployed["socket"])  # type: ignore[attr-defined]
    assert cached.stat().st_mtime_ns == before
    _assert_gone(server_pid, socket_path)  # a short session ends its server too
    print(f"\nzero-deploy over ssh (loopback): first connect {TIMES['first']:.2f} s "
          f"(bundle sent), second {TIMES['second']:.2f} s (cached)")


def test_a_corrupted_cache_file_is_replaced(host: Host) -> None:
    with host.connect():
        pass
    cached = host.cached()
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    with host.connect() as conn:
        assert conn.deployed["sent"] is True  # type: ignore[attr-defined]
        assert conn.eval("1 + 1") == 2
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == bundle.cached()[1]


def test_a_group_of_three_ssh_targets_deploys_concurrently(aliases: Host) -> None:
    aliases.forget()
    with rk.Group(["ssh:pi1", "ssh:pi2", "ssh:pi3"], connect_timeout=60) as group:
        pids = group.eval("__import__('os').getpid()")
        assert sorted(pids) == ["pi1", "pi2", "pi3"] and len(set(pids.values())) == 3
        executables = group.eval("__import__('sys').executable")
        assert set(executables.values()) == {SYSTEM_PYTHON}
    # Three writers, one file: each wrote its own temporary and renamed it in place.
    assert sorted(os.listdir(aliases.cache)) == [aliases.cached().name]
    assert hashlib.sha256(aliases.cached().read_bytes()).hexdigest() == bundle.cached()[1]


def test_a_remote_cell_runs_on_a_deployed_host(aliases: Host,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    try:
        shell.run_line_magic("remote", "connect ssh:pi1")
        assert "connected to pi1" in capsys.readouterr().out
        result = shell.run_cell("%%remote pi1\nimport sys\nprint('hello from', sys.executable)\n")
        assert result.error_in_exec is None, result.error_in_exec
        assert f"hello from {SYSTEM_PYTHON}" in capsys.readouterr().out
    finally:
        shell.run_line_magic("remote", "close pi1")
        shell.run_line_magic("unload_ext", "remote_kernel")


def test_clean_removes_the_cache(aliases: Host) -> None:
    with aliases.connect():
        pass
    assert aliases.cache.exists()
    out = subprocess.run([sys.executable, "-m", "remote_kernel", "clean", "ssh:pi2"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "removed" in out.stdout and "1 file" in out.stdout
    assert not aliases.cache.exists()


def test_a_killed_ssh_session_resumes_over_a_new_one(host: Host) -> None:
    with host.connect() as conn:
        server_pid = conn.modules.os.getpid()
        items = conn.eval("[1, 2, 3]")  # a netref made before the cut
        conn.execute("counter = 41")
        socket_path = Path(conn.deployed["socket"])  # type: ignore[attr-defined]
        first = conn.process  # type: ignore[attr-defined]
        os.kill(first.pid, signal.SIGKILL)  # ssh dies under a running session
        killed = time.monotonic()
        assert _wait(lambda: conn.state != "open", 10)
        assert _wait(lambda: conn.state == "open", 15), conn.state
        resumed = time.monotonic() - killed
        items.append(4)
        assert rk.obtain(items) == [1, 2, 3, 4]
        assert conn.eval("counter + 1") == 42
        assert conn.modules.os.getpid() == server_pid  # the same server, not a new one
        print(f"\nresumed {resumed:.2f} s after ssh was killed")
        assert resumed < 10
    _assert_gone(server_pid, socket_path)


def _assert_gone(server_pid: int, socket_path: Path) -> None:
    """The session closed: its server ended and left nothing behind."""
    import psutil

    def ended() -> bool:
        try:
            return psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert _wait(ended, 10), f"the server {server_pid} still runs"
    assert not socket_path.exists() and not socket_path.parent.exists()


def test_a_bare_host_name_goes_through_ssh_after_files_and_discovery(aliases: Host) -> None:
    with targets.connect_name("pi3", discover_for=0.5) as conn:
        assert conn.modules.sys.executable == SYSTEM_PYTHON
    with pytest.raises(rk.ConnectionClosed) as info:
        targets.connect_name("nowhere.invalid", discover_for=0.5, timeout=20)
    message = str(info.value)
    assert "\n" not in message
    assert "no connection file named 'nowhere.invalid'" in message
    assert "advertised" in message or "discovery" in message
    assert "ssh nowhere.invalid failed" in message

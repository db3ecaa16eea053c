"""connect_ssh against a real sshd that the test starts on a loopback port, with host and
user keys generated in a temporary directory."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")
VENV_PYTHON = sys.executable

pytestmark = [
    pytest.mark.serial,  # a real sshd: outside the parallel step
    pytest.mark.skipif(
        not (os.path.exists(SSHD) and SSH_KEYGEN and shutil.which("ssh")),
        reason="openssh-server and openssh-client are needed (make setup installs them)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    assert SSH_KEYGEN is not None
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)


class Sshd:
    """An sshd on 127.0.0.1 accepting one generated user key, nothing else."""

    def __init__(self, directory: Path, extra_config: Sequence[str] = ()) -> None:
        self.directory = directory
        self.user = getpass.getuser()
        self.host_key = directory / "host_ed25519"
        self.identity = directory / "user_ed25519"
        self.stranger = directory / "stranger_ed25519"
        for key in (self.host_key, self.identity, self.stranger):
            _keygen(key)
        authorized = directory / "authorized_keys"
        authorized.write_text(Path(f"{self.identity}.pub").read_text())
        authorized.chmod(0o600)
        self.port = _free_port()
        config = directory / "sshd_config"
        config.write_text("\n".join([
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {directory / 'sshd.pid'}",
            "ListenAddress 127.0.0.1",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            *extra_config,
            "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.log = directory / "sshd.log"
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config), "-p", str(self.port),
             "-o", "ListenAddress=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))  # noqa: SIM115
        self._wait_listening(timeout=15)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"sshd did not listen within {timeout} s: {self.log.read_text()}")

    def options(self) -> list[str]:
        return ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-F", "/dev/null"]

    def connect(self, python: str = VENV_PYTHON, identity: Path | None = None,
                **kwargs: Any) -> rk.Connection:
        return rk.connect_ssh(f"{self.user}@127.0.0.1", python=python, port=self.port,
                              identity=str(identity or self.identity),
                              ssh_options=self.options(), **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def test_connect_ssh_runs_a_classic_server(sshd: Sshd) -> None:
    import psutil

    with sshd.connect(timeout=30) as conn:
        assert conn.eval("6 * 7") == 42
        remote_pid = conn.root.getpid()
        assert remote_pid != os.getpid()
        assert conn.modules.sys.executable
        # The far side speaks over ssh's pipes: it listens on no port.
        far = psutil.Process(remote_pid)
        assert [c for c in far.net_connections(kind="inet") if c.status == "LISTEN"] == []
        assert conn.peer.startswith(f"ssh:{sshd.user}@127.0.0.1")
        process = conn.process  # type: ignore[attr-defined]
    process.wait(10)  # closing the connection ends ssh and the far interpreter
    deadline = time.monotonic() + 10
    while psutil.pid_exists(remote_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(remote_pid) or \
        psutil.Process(remote_pid).status() == psutil.STATUS_ZOMBIE


def test_missing_remote_package_gives_the_install_command(sshd: Sshd) -> None:
    bare = os.path.join(sys.base_prefix, "bin", "python3")
    probe = subprocess.run([bare, "-c", "import remote_kernel"], capture_output=True,
                           timeout=30)
    if probe.returncode == 0:
        pytest.skip(f"{bare} has remote_kernel installed")
    with pytest.raises(rk.RemoteKernelError) as info:
        sshd.connect(python=bare, timeout=30, deploy=False)  # (zero-deploy: tests/deploy)
    message = str(info.value)
    assert "no remote_kernel package" in message
    assert "pip install remote_kernel" in message
    assert bare in message


def test_missing_remote_python_is_explained(sshd: Sshd) -> None:
    with pytest.raises(rk.RemoteKernelError) as info:
        sshd.connect(python="/nonexistent/python3", timeout=30)
    assert "/nonexistent/python3" in str(info.value)


def test_unknown_key_is_refused_without_prompting(sshd: Sshd) -> None:
    started = time.monotonic()
    with pytest.raises(rk.ConnectionClosed, match="Permission denied"):
        sshd.connect(identity=sshd.stranger, timeout=30)
    assert time.monotonic() - started < 20  # BatchMode: no password prompt to hang on


@pytest.mark.parametrize("destination", ["-oProxyCommand=touch {marker}", "",
                                         "host -oProxyCommand=touch {marker}"])
def test_destination_cannot_smuggle_ssh_options(tmp_path: Path, destination: str) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="not an ssh destination"):
        rk.connect_ssh(destination.format(marker=marker), timeout=5)
    assert not marker.exists()


def test_remote_python_argument_is_quoted(sshd: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    with pytest.raises(rk.RemoteKernelError):
        sshd.connect(python=f"python3; touch {marker}", timeout=30)
    assert not marker.exists()

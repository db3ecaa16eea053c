"""What is wired to discovery: ``serve --advertise`` (announced with its name, port, TLS flag
and service class, never the token; withdrawn on SIGTERM), ``remote-kernel discover``,
``%remote discover`` and ``%remote connect NAME`` for a server found on the network (still
authenticating with its token). Discovery itself is replaced by tests/discovery_stub.py;
the zeroconf module is tested on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from tests import discovery_stub as stub
from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(60)


def _child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    stub.sitecustomize(site)
    return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
                RK_DISCOVERY_LOG=str(tmp_path / "discovery.log"), **extra)


def _wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise TimeoutError(what)


def test_serve_advertises_without_the_token_and_withdraws_on_sigterm(tmp_path: Path) -> None:
    env = _child_env(tmp_path)
    connection_file = tmp_path / "bench.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel", "serve", "--classic", "--name", "bench",
         "--connection-file", str(connection_file), "--advertise", "--interface", "127.0.0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "discovery.log"
    try:
        advertised = _wait_for(lambda: [e for e in stub.events(log) if e[0] == "advertise"],
                               20, "the advertisement")
        info = json.loads(connection_file.read_text())
        assert advertised == [["advertise", "bench", info["port"], False, "ClassicService",
                               "127.0.0.1"]]
        assert info["token"] and info["token"] not in log.read_text()
        with rk.connect(str(connection_file)) as conn:  # still serving meanwhile
            assert conn.eval("1 + 1") == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    out, err = process.communicate()
    assert "advertised as 'bench'" in out
    assert "advertised on this machine only (loopback)" in err  # it listens on lo
    assert [e[0] for e in stub.events(log)] == ["advertise", "close"]
    assert not connection_file.exists()


def test_serve_refuses_advertising_what_cannot_be_reached(tmp_path: Path) -> None:
    env = _child_env(tmp_path)
    for extra in (["--stdio"], ["--unix", str(tmp_path / "s.sock")]):
        result = subprocess.run([sys.executable, "-m", "remote_kernel", "serve", "--classic",
                                 "--advertise", *extra], env=env, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode != 0 and "TCP server" in result.stderr
    result = subprocess.run([sys.executable, "-m", "remote_kernel", "serve", "--classic",
                             "--interface", "127.0.0.1"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0 and "--interface goes with --advertise" in result.stderr
    assert stub.events(tmp_path / "discovery.log") == []


def test_discover_command_prints_a_table_and_json(tmp_path: Path) -> None:
    servers = stub.servers_env(stub.ServerInfo("bench-a", "192.168.1.20", 40001, False,
                                               "Lab"),
                               stub.ServerInfo("pi", "192.168.1.31", 40002, True,
                                               "ClassicService"))
    env = _child_env(tmp_path, RK_DISCOVERY_SERVERS=servers)
    result = subprocess.run([sys.executable, "-m", "remote_kernel", "discover", "--timeout",
                             "0.5"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "TLS", "SERVICE"]
    assert lines[1].split() == ["bench-a", "192.168.1.20:40001", "no", "Lab"]
    assert lines[2].split() == ["pi", "192.168.1.31:40002", "yes", "ClassicService"]
    result = subprocess.run([sys.executable, "-m", "remote_kernel", "discover", "--json"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert [server["name"] for server in json.loads(result.stdout)] == ["bench-a", "pi"]
    assert stub.events(tmp_path / "discovery.log")[0] == ["discover", 0.5, None]
    empty = subprocess.run([sys.executable, "-m", "remote_kernel", "discover"],
                           env=_child_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert empty.returncode == 0 and "no servers advertised" in empty.stderr


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[InteractiveShell]:
    stub.install(monkeypatch)
    monkeypatch.setenv("RK_DISCOVERY_LOG", str(tmp_path / "discovery.log"))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "remote_kernel")
    yield shell
    shell.run_line_magic("unload_ext", "remote_kernel")


def test_remote_discover_is_a_table(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("RK_DISCOVERY_SERVERS", stub.servers_env(
        stub.ServerInfo("bench-a", "192.168.1.20", 40001, False, "Lab")))
    shell.run_line_magic("remote", "discover --timeout 0.5")
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "address", "tls", "service"]
    assert out[1].split() == ["bench-a", "192.168.1.20:40001", "no", "Lab"]
    assert "%remote connect NAME" in out[2]
    monkeypatch.setenv("RK_DISCOVERY_SERVERS", "[]")
    shell.run_line_magic("remote", "discover")
    assert "no servers advertised" in capsys.readouterr().out


def test_connect_by_a_discovered_name_needs_the_token(shell: InteractiveShell, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    server = ServerProcess(tmp_path, "--classic", name="hidden")
    try:
        server.file.unlink()  # no connection file here: only the network knows it
        monkeypatch.setenv("RK_DISCOVERY_SERVERS", stub.servers_env(
            stub.ServerInfo("labpc", "127.0.0.1", server.port, False, "ClassicService")))
        with pytest.raises(UsageError) as caught:  # a user's mistake: one line
            shell.run_line_magic("remote", "connect labpc")
        message = str(caught.value)
        assert "labpc was found on the network at 127.0.0.1:" in message
        assert "--token-file" in message
        shell.run_line_magic("remote", f"connect labpc --token-file {server.token_file}")
        assert "connected to labpc" in capsys.readouterr().out
        assert shell.user_ns["labpc"].eval("__import__('os').getpid()") == server.pid
        shell.run_line_magic("remote", "close labpc")
        # A name nobody announces is tried as an ssh host last; one line says all three.
        with pytest.raises(Exception, match="no connection file .*; no server advertised as "
                                            "'nobody'; ssh nobody failed"):
            shell.run_line_magic("remote", "connect nobody")
    finally:
        server.stop()


def test_the_public_names_when_discovery_is_installed() -> None:
    discovery = pytest.importorskip(stub.MODULE)
    if discovery is stub:
        pytest.skip("only the stub is installed")
    assert rk.discover is discovery.discover and rk.ServerInfo is discovery.ServerInfo
    assert {"discover", "ServerInfo"} <= set(rk.__all__)


WITHOUT_ZEROCONF = """
import sys
sys.modules["zeroconf"] = None  # as on a device served from the bundle: not installed
import remote_kernel as rk
assert rk.ServerInfo.__name__ == "ServerInfo"  # the record type needs no zeroconf
try:
    rk.discover(timeout=0.1)
except rk.DiscoveryError as exc:
    print("refused:", exc)
"""


def test_without_zeroconf_discovery_is_one_line_saying_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", WITHOUT_ZEROCONF], capture_output=True,
                            text=True, timeout=60, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: finding or announcing servers on the network "
                                    "needs the zeroconf package (pip install zeroconf)")
    assert "Traceback" not in result.stderr

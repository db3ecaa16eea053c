"""Fixtures: real server processes on loopback, and an in-memory connection pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports import memory_pair

ROOT = Path(__file__).resolve().parent.parent


# Folders whose every test shares system state, marked here so that a new file there needs
# no mark of its own: JupyterLab in chromium (lab), network namespaces and relays (serial).
FOLDER_MARKS = {"lab": pytest.mark.lab, "net": pytest.mark.serial}
TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The folder marks; then, under pytest-xdist, the modules that hold slow tests go first
    (each kept whole, for its module fixtures): a long test that started last would keep one
    worker busy alone."""
    for item in items:
        parents = item.path.resolve().parents
        for folder, mark in FOLDER_MARKS.items():
            if TESTS / folder in parents:
                item.add_marker(mark)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow_modules = {getattr(item, "module", None) for item in items
                    if item.get_closest_marker("slow")}
    # A stable sort: the order is otherwise kept.
    items.sort(key=lambda item: getattr(item, "module", None) not in slow_modules)


@pytest.fixture(autouse=True, scope="session")
def _isolated_jupyter_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.mktemp("jupyter")
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        path = base / sub
        path.mkdir()
        os.environ.setdefault(var, str(path))
    yield


BLOCKER = """import os, sys
for _name in os.environ.get("RK_TEST_BLOCK", "").split(","):
    if _name:
        sys.modules[_name] = None  # an import of it fails, as if it were not installed
"""


class ServerProcess:
    """``remote-kernel serve`` in a child process; reads its connection file. ``block``
    names modules the server must behave as if it lacked (numpy, pandas, IPython)."""

    def __init__(self, tmp: Path, *args: str, name: str = "test",
                 block: tuple[str, ...] = ()) -> None:
        self.file = tmp / f"{name}.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if block:
            site = tmp / f"{name}-site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(BLOCKER)
            env.update(PYTHONPATH=f"{site}{os.pathsep}{ROOT}", RK_TEST_BLOCK=",".join(block))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "remote_kernel", "serve", "--name", name,
             "--connection-file", str(self.file), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + 20
        while not self.file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        self.info: dict[str, Any] = json.loads(self.file.read_text())
        self.port: int = self.info["port"]
        self.token: str | None = self.info["token"]
        self.token_file = tmp / f"{name}.token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.token or "")
        self.pid = self.process.pid

    def connect(self, **kwargs: Any) -> Connection:
        kwargs.setdefault("token", self.token)
        return rk.connect("127.0.0.1", self.port, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[ServerProcess] = []

    def start(*args: str, name: str = "test", block: tuple[str, ...] = ()) -> ServerProcess:
        server = ServerProcess(tmp_path, *args, name=f"{name}{len(servers)}", block=block)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def test_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("srv"), "--service",
                           "tests.services:TestService", "--no-auth")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def classic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("classic"), "--classic", name="classic")
    yield server
    server.stop()


@pytest.fixture
def conn(test_server: ServerProcess) -> Iterator[Connection]:
    connection = test_server.connect()
    yield connection
    connection.close()


@pytest.fixture
def classic(classic_server: ServerProcess) -> Iterator[Connection]:
    connection = classic_server.connect()
    yield connection
    connection.close()


@pytest.fixture
def pair() -> Iterator[Any]:
    """Two connections in this process over a socketpair: (client, server side)."""
    from tests.services import TestService

    left, right = memory_pair("client", "server")
    server_conn = Connection(right, TestService, name="client")
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set() and not server_conn.closed:
            try:
                server_conn.serve(0.1)
            except rk.ConnectionClosed:
                break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = Connection(left, rk.VoidService, name="server")
    yield client, server_conn
    stop.set()
    client.close()
    server_conn.close()
    thread.join(5)

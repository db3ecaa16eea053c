"""`remote-kernel serve` end to end, connection files, tokens, transports."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import remote_kernel as rk
from remote_kernel.net import connfile

PACKAGE = Path(rk.__file__).parent


def test_serve_writes_a_private_connection_file_and_prints_how_to_connect(start_server) -> None:
    server = start_server("--classic", name="lab")
    mode = stat.S_IMODE(server.file.stat().st_mode)
    assert mode == 0o600
    assert server.info["token"] and server.info["pid"] == server.pid
    line = server.process.stdout.readline().decode()
    line += server.process.stdout.readline().decode() + server.process.stdout.readline().decode()
    # The file was written where --connection-file said: the hint names that path, and
    # what it says works as it is.
    hint = next(text for text in line.splitlines() if "%remote connect" in text)
    assert f"%remote connect {server.file} " in hint
    assert f"remote_kernel.connect({str(server.file)!r})" in hint
    with rk.connect(str(server.file)) as conn:
        assert conn.eval("1 + 1") == 2


def test_connect_by_name_from_the_runtime_dir(tmp_path: Path) -> None:
    env = dict(os.environ)
    process = subprocess.Popen([sys.executable, "-m", "remote_kernel", "serve", "--classic",
                                "--name", "byname"], stdout=subprocess.PIPE, env=env)
    try:
        path = connfile.path_for("byname")
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with rk.connect("byname") as conn:
            assert conn.modules.os.getpid() == process.pid
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
    assert not connfile.path_for("byname").exists()  # removed on exit


def test_wrong_and_missing_token_and_the_server_keeps_serving(start_server) -> None:
    server = start_server("--classic")
    with pytest.raises(rk.AuthenticationError, match="wrong token"):
        rk.connect("127.0.0.1", server.port, token="not-the-token")
    with pytest.raises(rk.AuthenticationError, match="requires a token"):
        rk.connect(f"127.0.0.1:{server.port}")
    with rk.connect(f"127.0.0.1:{server.port}", token=server.token) as conn:
        assert conn.eval("'ok'") == "ok"


def test_group_readable_connection_file_is_refused(start_server) -> None:
    server = start_server("--classic")
    os.chmod(server.file, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        rk.connect(str(server.file))


def test_unknown_target_names_what_was_tried() -> None:
    with pytest.raises(ValueError, match="no connection file"):
        rk.connect("no-such-server-name")


def test_unix_socket_transport(tmp_path: Path) -> None:
    path = str(tmp_path / "rk.sock")
    with rk.Server(rk.ClassicService, unix_path=path):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
        with rk.connect_unix(path) as conn:
            assert conn.eval("3 * 3") == 9
            assert conn.peer == path


def test_subprocess_transport() -> None:
    with rk.connect_subprocess() as conn:
        pid = conn.modules.os.getpid()
        assert pid != os.getpid() and pid == conn.process.pid
        conn.execute("print('to stderr, not into the protocol')")
        assert conn.eval("sum(range(10))") == 45


def test_classic_server_cannot_reach_the_clients_interpreter(classic: rk.Connection) -> None:
    classic.execute(
        "def probe(cb):\n"
        "    found = []\n"
        "    for name in ('__globals__', '__code__', '__class__', '__dict__', '__builtins__',\n"
        "                 '__closure__', '__self__', '__module__'):\n"
        "        try:\n"
        "            getattr(cb, name)\n"
        "            found.append(name)\n"
        "        except AttributeError:\n"
        "            pass\n"
        "    try:\n"
        "        cb.__getattr__('__globals__')\n"
        "        found.append('__getattr__')\n"
        "    except AttributeError:\n"
        "        pass\n"
        "    return found\n")
    secret = {"key": "value"}

    def callback() -> dict:
        return secret

    reached = classic.namespace["probe"](callback)
    assert list(reached) in ([], ["__class__"], ["__class__", "__module__"], ["__module__"])
    assert classic.namespace["probe"](callback) is not None
    with pytest.raises(AttributeError):
        classic.eval("lambda cb: cb.__globals__")(callback)


def test_no_module_of_the_package_imports_pickle() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle")
                   for name in names):
                offenders.append(str(path))
    assert offenders == []


def test_public_api_matches_all() -> None:
    exported = set(rk.__all__)
    public = {name for name in dir(rk) if not name.startswith("_")}
    assert public - exported == set()
    # Every exported name resolves (lazily) to a real object.
    for name in exported:
        assert getattr(rk, name) is not None
    for name in ("Service", "VoidService", "ClassicService", "exposed", "Server", "connect",
                 "connect_unix", "connect_subprocess", "connect_ssh", "obtain", "deliver",
                 "async_", "AsyncResult", "BgServingThread", "RemoteError", "ProtocolError",
                 "ConnectionClosed", "RequestTimeout", "AuthenticationError", "AccessDenied",
                 "RemoteKernelError", "load_ipython_extension"):
        assert name in exported


def test_a_server_needs_its_service_said() -> None:
    # As RPyC's ThreadedServer: serving the whole interpreter is never a default.
    with pytest.raises(TypeError):
        rk.Server()  # type: ignore[call-arg]

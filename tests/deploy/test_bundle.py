"""``remote-kernel bundle``: one file that serves, run by an interpreter that has neither
remote_kernel nor msgpack (the system /usr/bin/python3 here), under ``python3 -I``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import remote_kernel as rk
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

SYSTEM_PYTHON = "/usr/bin/python3"
NOTEBOOK_ONLY = ("IPython", "ipykernel", "jupyter_client", "nh3", "zeroconf")

# How a printed traceback shows the remote frames: a PEP 678 note, or on Python 3.10 (which
# prints no notes) a chained RemoteTraceback cause (README, "Remote errors").
REMOTE_TRACEBACK = re.compile(r"Remote traceback|RemoteTraceback")


def _bundle(path: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "remote_kernel", "bundle"] + (["-o", str(path)] if path else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "rk.pyz"
    _bundle(path)
    return path


def _bare(python: str) -> bool:
    """True when ``python -I`` has neither remote_kernel nor msgpack."""
    probe = subprocess.run([python, "-I", "-c", "import msgpack"], capture_output=True,
                           timeout=30)
    probe2 = subprocess.run([python, "-I", "-c", "import remote_kernel"], capture_output=True,
                            timeout=30)
    return probe.returncode != 0 and probe2.returncode != 0


def test_the_bundle_is_reproducible_and_written_where_asked(tmp_path: Path,
                                                            bundle: Path) -> None:
    again = tmp_path / "deeper" / "other-name.pyz"
    again.parent.mkdir()
    out = _bundle(again).stdout
    assert again.read_bytes() == bundle.read_bytes()  # built twice: the same bytes
    assert os.listdir(again.parent) == ["other-name.pyz"]  # exactly PATH, no temporary left
    assert str(again) in out
    _bundle(None, cwd=tmp_path)  # type: ignore[arg-type]
    assert (tmp_path / f"remote-kernel-{rk.__version__}.pyz").read_bytes() == \
        bundle.read_bytes()


def test_the_bundle_holds_the_served_layers_and_msgpack_with_its_licence(bundle: Path) -> None:
    with zipfile.ZipFile(bundle) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        licence = archive.read("_vendor/msgpack/COPYING").decode()
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert "__main__.py" in names and "remote_kernel/net/serve_main.py" in names
    assert "_vendor/msgpack/fallback.py" in names and "msgpack/fallback.py" not in names
    assert "Copyright" in licence
    folders = {name.split("/")[1] for name in names if name.startswith("remote_kernel/")
               and name.count("/") > 1}
    assert folders == {"protocol", "remote", "core", "net"}
    assert not [name for name in names if "sanitize" in name or "outputs" in name
                or "__pycache__" in name or name.endswith("net/dask.py")]


class Served:
    def __init__(self, process: subprocess.Popen[str], connection_file: Path) -> None:
        self.process, self.connection_file = process, connection_file

    def stderr(self) -> str:
        self.process.terminate()
        return self.process.communicate(timeout=10)[1]


def _serve(python: list[str], bundle: Path, tmp_path: Path, *extra: str) -> Iterator[Served]:
    connection_file = tmp_path / "served.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.Popen([*python, str(bundle), "serve", "--classic", "--port", "0",
                                "--connection-file", str(connection_file), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not connection_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the bundle did not serve within 30 s"
            time.sleep(0.05)
        yield Served(process, connection_file)
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=10)
    assert not connection_file.exists()  # removed when the server stops


@pytest.fixture
def system_served(bundle: Path, tmp_path: Path) -> Iterator[Served]:
    if not os.path.exists(SYSTEM_PYTHON) or not _bare(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} is missing or has remote_kernel or msgpack")
    yield from _serve([SYSTEM_PYTHON, "-I"], bundle, tmp_path, "--advertise")


def test_a_bare_system_python_serves_the_bundle(system_served: Served) -> None:
    import numpy as np

    with rk.connect(str(system_served.connection_file)) as conn:
        assert conn.modules.sys.executable == SYSTEM_PYTHON
        assert conn.eval("__import__('sys').flags.isolated") == 1
        # msgpack is the bundle's pure-Python copy: the host has none.
        assert conn.eval("__import__('msgpack').Packer.__module__") == "msgpack.fallback"
        path = conn.modules.os.path  # classic netrefs
        assert path.join("a", "b") == "a/b"
        assert rk.obtain(conn.eval("{'k': [1, 2.5, b'x']}")) == {"k": [1, 2.5, b"x"]}
        with pytest.raises(ZeroDivisionError) as info:
            conn.eval("1 / 0")
        assert REMOTE_TRACEBACK.search(_formatted(info.value))
        # The host has no numpy: an array stays here and goes by reference (no error).
        kind = conn.eval("lambda x: (type(x).__name__, type(x).__module__, len(x))")
        name, module, total = kind(np.arange(4))
        assert (name, total) == ("ndarray", 4) and module.startswith("remote_kernel.core.netref")
        assert conn.eval("__import__('importlib.util').util.find_spec('numpy')") is None
    note = system_served.stderr()
    assert "not advertised: discovery needs zeroconf" in note  # one line, and it served


def _formatted(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


def test_the_remote_traceback_names_the_remote_frame(system_served: Served) -> None:
    with rk.connect(str(system_served.connection_file)) as conn:
        conn.execute("def inner():\n    raise KeyError('remote side')\n")
        with pytest.raises(KeyError) as info:
            conn.eval("inner()")
    text = _formatted(info.value)
    assert REMOTE_TRACEBACK.search(text) and "inner" in text and "remote side" in text


def test_a_host_with_numpy_and_c_msgpack_uses_them(bundle: Path, tmp_path: Path) -> None:
    import numpy as np

    # This venv's interpreter without -I: it has numpy and the C msgpack, not this tree.
    for served in _serve([sys.executable], bundle, tmp_path):
        with rk.connect(str(served.connection_file)) as conn:
            assert conn.eval("__import__('remote_kernel').__file__").startswith(str(bundle))
            assert conn.eval("__import__('msgpack').Packer.__module__") == "msgpack._cmsgpack"
            array = rk.obtain(conn.eval("__import__('numpy').arange(6).reshape(2, 3)"))
            assert isinstance(array, np.ndarray) and array.tolist() == [[0, 1, 2], [3, 4, 5]]
            delivered = rk.deliver(conn, np.ones(3))  # by value: a real array there
            assert conn.eval("lambda a: type(a).__module__")(delivered) == "numpy"


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys, json\n{code}\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_served_layers_import_no_notebook_library() -> None:
    loaded = _loaded(
        "import importlib, pkgutil\n"
        "for layer in ('protocol', 'remote', 'core', 'net'):\n"
        "    package = importlib.import_module('remote_kernel.' + layer)\n"
        "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        if not info.name.endswith(('discovery', 'dask')):\n"
        "            importlib.import_module(info.name)\n")
    assert [m for m in loaded if m.split(".")[0] in NOTEBOOK_ONLY] == []
    assert "remote_kernel.net.sshserve" in loaded


def test_the_serve_command_imports_no_notebook_layer(tmp_path: Path) -> None:
    loaded = _loaded(
        "import remote_kernel.net.server as server\n"
        "server.Server.start = lambda self: None\n"
        "from remote_kernel import cli\n"
        f"cli.main(['serve', '--classic', '--connection-file', {str(tmp_path / 'f.json')!r}])")
    assert [m for m in loaded if m.split(".")[0] in NOTEBOOK_ONLY] == []
    assert [m for m in loaded if m.startswith(("remote_kernel.ipython", "remote_kernel.kernel",
                                               "remote_kernel.demo"))] == []


def test_the_served_layers_import_on_windows() -> None:
    script = Path(__file__).with_name("windows_import.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert "remote_kernel.protocol.uninit" in result["imported"]
    assert "remote_kernel.net.server" in result["imported"]
    assert [m for m in result["loaded"] if m.split(".")[0] in NOTEBOOK_ONLY] == []

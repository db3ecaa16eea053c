"""The layers of README.md "How the code is organised": what a plain import loads, and
which folder may import which. Each check runs in a fresh interpreter, so nothing loaded by
other tests counts."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(__file__).resolve().parents[2] / "remote_kernel"

# Layer order, bottom first; a module may import its own layer and those below it. The output
# filter (nh3) sits above net so that nothing a server or a client script loads can reach it.
LAYERS = ["base", "protocol", "remote", "core", "net", "outputs", "ipython", "kernel", "top"]


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"  # the package root re-exports the public API (lazily)
    if parts[1] in ("errors", "config", "__version__"):
        return "base"
    if parts[1] in ("cli", "__main__", "demo"):
        return "top"
    return parts[1]


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


def test_codec_import_loads_only_the_protocol_and_the_bottom() -> None:
    loaded = [m for m in _loaded_after("import remote_kernel.protocol.codec")
              if m.startswith("remote_kernel")]
    # The package root runs too (Python imports parents first), but loads nothing itself.
    outside = [m for m in loaded if _layer(m) not in ("base", "protocol")
               and m != "remote_kernel"]
    assert outside == [], outside
    assert "remote_kernel.protocol.codec" in loaded


def test_plain_import_loads_no_host_or_optional_library() -> None:
    loaded = _loaded_after("import remote_kernel")
    heavy = [m for m in loaded
             if m.split(".")[0] in ("IPython", "ipykernel", "jupyter_client", "numpy",
                                    "pandas", "tornado", "zmq", "nh3", "zeroconf")]
    assert heavy == []
    assert [m for m in loaded if m.startswith("remote_kernel.")] == []


def test_a_server_needs_no_ipython_layer() -> None:
    loaded = _loaded_after("import remote_kernel as rk\nrk.Server, rk.connect, rk.obtain")
    assert not [m for m in loaded if m.split(".")[0] in ("IPython", "ipykernel", "numpy")]
    assert not [m for m in loaded if m.startswith(("remote_kernel.ipython",
                                                   "remote_kernel.kernel"))]


def _filter_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if m.split(".")[0] == "nh3" or m.startswith("remote_kernel.outputs")]


def test_core_loads_no_output_filter() -> None:
    """The output filter (and nh3) is the notebook side's: a connection never loads it."""
    loaded = _loaded_after("import remote_kernel.core.connection")
    assert "remote_kernel.core.connection" in loaded
    assert _filter_modules(loaded) == []


def test_servers_and_clients_load_no_output_filter() -> None:
    loaded = _loaded_after("import remote_kernel as rk\n"
                           "rk.Server, rk.connect, rk.Group, rk.connect_ssh, rk.obtain\n"
                           "import remote_kernel.net.targets, remote_kernel.cli")
    assert "remote_kernel.net.targets" in loaded
    assert _filter_modules(loaded) == []


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "remote_kernel":  # from remote_kernel import errors
                found += [f"remote_kernel.{alias.name}" for alias in node.names]
            else:
                found.append(node.module)
    return [name for name in found if name.startswith("remote_kernel")]


def test_every_folder_imports_only_its_layer_and_those_below() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "labextension" in path.parts:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        own = LAYERS.index(_layer(module))
        for imported in _imports(path):
            target = _layer(imported)
            if LAYERS.index(target) > own:
                offenders.append(f"{module} ({_layer(module)}) imports {imported} ({target})")
    assert offenders == []


def test_bottom_modules_import_nothing_of_the_package() -> None:
    for name in ("errors.py", "config.py"):
        assert _imports(PACKAGE / name) == [], name


def _imported_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every ``from module import name`` in a file, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names]


def test_no_module_above_core_speaks_opcodes() -> None:
    """Layers above core call the Connection's public API (``conn.call(..., timeout=)``,
    ``object_info``, ``completions``...), never ``sync_request`` with an opcode (issue 22)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "labextension" in path.parts:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if LAYERS.index(_layer(module)) <= LAYERS.index("core"):
            continue
        for source, name in _imported_names(path):
            if source == "remote_kernel.protocol.messages" and name in ("Op", "*"):
                offenders.append(module)
            if source == "remote_kernel.protocol" and name == "messages":
                offenders.append(module)
        if "sync_request(" in path.read_text():
            offenders.append(f"{module} (sync_request)")
    assert offenders == []

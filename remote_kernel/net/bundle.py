"""``remote-kernel bundle``: the served side in one file (a PEP 441 zipapp).

The archive holds the served layers (errors, config, protocol, remote, core, net) and, under
``_vendor/``, msgpack's pure-Python implementation copied from the msgpack installed here
with its licence. Its ``__main__`` puts ``_vendor`` on the path only when the host has no
msgpack of its own, so a host with the C msgpack uses it.

Reproducible: entries sorted, every timestamp 1980-01-01, fixed modes and compression, so
the bytes depend only on the source (and zlib). Zero-deploy (net/deploy.py) names the cached
copy on a device by the hash of these bytes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import zipfile
from pathlib import Path

from remote_kernel import __version__

SERVED = ("protocol", "remote", "core", "net")  # folders of the package that serve
SERVED_FILES = ("__init__.py", "errors.py", "config.py")
# Modules of those folders that a device never needs: net/dask.py runs where Dask (and
# so the whole package) is installed, on the notebook side and in Dask's workers.
NOT_SERVED = frozenset({"net/dask.py"})
MSGPACK_FILES = ("__init__.py", "exceptions.py", "ext.py", "fallback.py")
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SHEBANG = b"#!/usr/bin/env python3\n"

MAIN = '''\
"""remote_kernel {version}, served side (remote-kernel bundle): python3 THIS.pyz --help"""
import os
import sys

if sys.version_info < (3, 10):
    sys.exit("remote-kernel: this bundle needs Python 3.10 or newer, not " + sys.version.split()[0])
try:
    import msgpack  # noqa: F401  (the host's own, C where it has it)
except ImportError:  # the pure-Python copy inside this archive
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor"))
from remote_kernel.net.serve_main import main

sys.exit(main())
'''


def default_name() -> str:
    return f"remote-kernel-{__version__}.pyz"


def _package_files() -> list[tuple[str, bytes]]:
    root = Path(__file__).resolve().parents[1]
    files = [(f"remote_kernel/{name}", (root / name).read_bytes()) for name in SERVED_FILES]
    for folder in SERVED:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if "__pycache__" in relative or relative in NOT_SERVED:
                continue
            files.append((f"remote_kernel/{relative}", path.read_bytes()))
    return files


def _msgpack_files() -> list[tuple[str, bytes]]:
    spec = importlib.util.find_spec("msgpack")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("msgpack is not installed here: the bundle copies its "
                           "pure-Python implementation from it")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = [(f"_vendor/msgpack/{name}", (folder / name).read_bytes())
             for name in MSGPACK_FILES]
    licence = _msgpack_licence()
    files.append(("_vendor/msgpack/COPYING", licence))
    return files


def _msgpack_licence() -> bytes:
    dist = importlib.metadata.distribution("msgpack")
    for file in dist.files or []:
        if file.name in ("COPYING", "LICENSE", "LICENSE.txt") and "dist-info" in str(file):
            return Path(str(dist.locate_file(file))).read_bytes()
    raise RuntimeError("the msgpack installed here has no licence file to copy")


def build_bytes() -> bytes:
    """The bundle's bytes (the same for the same source)."""
    entries = [("__main__.py", MAIN.format(version=__version__).encode())]
    entries += _package_files() + _msgpack_files()
    entries.sort()
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever builds it
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


@functools.lru_cache(maxsize=1)
def cached() -> tuple[bytes, str]:
    """The bundle of this process's source and its sha256 (hex), built once."""
    data = build_bytes()
    return data, hashlib.sha256(data).hexdigest()


def write(path: str | os.PathLike[str] | None = None) -> Path:
    """Write the bundle to ``path`` (default: remote-kernel-VERSION.pyz here), atomically,
    executable; returns the path written."""
    target = Path(path) if path is not None else Path(default_name())
    data = build_bytes()
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(0o755)
    os.replace(temporary, target)
    return target


__all__ = ["build_bytes", "cached", "default_name", "write"]

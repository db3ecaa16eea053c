"""Run as a script: import every served module as if on Windows; print what loaded (JSON).

Windows has no fcntl/termios/pwd/grp/resource, no select.poll, no socket.AF_UNIX, no
mmap.MADV_HUGEPAGE, no POSIX signals beyond a few, and ``ctypes.CDLL(None)`` raises
TypeError there."""

from __future__ import annotations

import asyncio  # noqa: F401  (the standard library's own platform branches, loaded first:
import ctypes  # on Windows they load modules this machine does not have: _winapi, nt...)
import importlib
import importlib.metadata  # noqa: F401
import json
import mmap
import pkgutil
import select
import shutil  # noqa: F401
import signal
import socket
import subprocess  # noqa: F401
import sys
import tempfile  # noqa: F401
import zipapp  # noqa: F401
import zipfile  # noqa: F401
import zoneinfo  # noqa: F401  (reads sysconfig, whose Windows data this machine lacks)

sys.platform = "win32"
for name in ("fcntl", "termios", "pwd", "grp", "resource", "posix_ipc", "readline"):
    sys.modules[name] = None  # type: ignore[assignment]  (import fails with ImportError)
for module, attribute in ((select, "poll"), (socket, "AF_UNIX"), (mmap, "MADV_HUGEPAGE"),
                          (signal, "SIGKILL"), (signal, "SIGHUP"), (signal, "SIGQUIT"),
                          (signal, "SIGUSR1"), (signal, "SIGALRM")):
    if hasattr(module, attribute):
        delattr(module, attribute)
_real_cdll = ctypes.CDLL


class _WindowsCDLL(_real_cdll):  # type: ignore[misc, valid-type]
    def __init__(self, name: object, *args: object, **kwargs: object) -> None:
        if name is None:
            raise TypeError("LoadLibrary() argument 1 must be str, not None")
        super().__init__(name, *args, **kwargs)


ctypes.CDLL = _WindowsCDLL  # type: ignore[misc]

# Not served (net/bundle.py NOT_SERVED), or only where zeroconf is installed.
SKIP = ("remote_kernel.net.discovery", "remote_kernel.net.dask")
imported = ["remote_kernel.errors", "remote_kernel.config"]
for name in imported[:]:
    importlib.import_module(name)
for layer in ("protocol", "remote", "core", "net"):
    package = importlib.import_module(f"remote_kernel.{layer}")
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if info.name not in SKIP:
            importlib.import_module(info.name)
            imported.append(info.name)
print(json.dumps({"imported": imported, "loaded": sorted(sys.modules)}))

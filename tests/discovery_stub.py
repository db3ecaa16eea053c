"""A stand-in for ``remote_kernel.net.discovery`` (the zeroconf module), for the tests of what
is wired to it: ``serve --advertise``, ``remote-kernel discover``, ``%remote discover``,
``%remote connect NAME`` and the lab panel. Same API: ``advertise(name, port, *, tls,
service, interface=None)`` and ``discover(timeout=2.0, *, interface=None)``.

It records each call as a JSON line in the file ``RK_DISCOVERY_LOG`` names and "discovers"
the servers listed (JSON) in ``RK_DISCOVERY_SERVERS``. The real discovery, over real
multicast between network namespaces, is tested with the module itself.

``install(sys.modules)`` puts it in place in this process; :func:`sitecustomize` writes a
``sitecustomize.py`` that does it in child processes started with that directory first on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from remote_kernel.net.dnssd import ServerInfo  # the real record type (no zeroconf)

MODULE = "remote_kernel.net.discovery"




def _log(*event: Any) -> None:
    path = os.environ.get("RK_DISCOVERY_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(event) + "\n")


class Advertisement:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _log("close", self.name)

    def __enter__(self) -> Advertisement:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def advertise(name: str, port: int, *, tls: bool, service: str,
              interface: str | None = None) -> Advertisement:
    _log("advertise", name, port, tls, service, interface)
    return Advertisement(name)


def discover(timeout: float = 2.0, *, interface: str | None = None) -> list[ServerInfo]:
    _log("discover", timeout, interface)
    return [ServerInfo(**server) for server in json.loads(
        os.environ.get("RK_DISCOVERY_SERVERS", "[]"))]


def servers_env(*servers: ServerInfo) -> str:
    return json.dumps([asdict(server) for server in servers])


def events(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def install(monkeypatch: Any) -> None:
    """Use this module as discovery in this process (undone by the monkeypatch)."""
    import remote_kernel.net

    monkeypatch.setitem(sys.modules, MODULE, sys.modules[__name__])
    monkeypatch.setattr(remote_kernel.net, "discovery", sys.modules[__name__], raising=False)


def sitecustomize(directory: Path) -> Path:
    """A sitecustomize.py in ``directory`` that installs this stub in a child process."""
    path = directory / "sitecustomize.py"
    path.write_text("import sys\nimport tests.discovery_stub as stub\n"
                    f"sys.modules[{MODULE!r}] = stub\n")
    return path

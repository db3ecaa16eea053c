"""Services: what one side of a connection exposes to the other.

``Service`` subclasses expose ``exposed_*`` names (visible with and without the prefix) and
methods decorated with :func:`exposed`. A service class gets one instance per connection;
an instance passed instead is shared by all connections.
"""

from __future__ import annotations

import builtins
import importlib
import itertools
import linecache
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from remote_kernel.protocol.policy import exposed

if TYPE_CHECKING:
    from remote_kernel.core.connection import Connection


class Service:
    """Base class of services; override ``on_connect``/``on_disconnect`` as needed."""

    # Protocol config defaults this service needs (the user's config still wins).
    _protocol_config: ClassVar[dict[str, Any]] = {}

    def on_connect(self, conn: Connection) -> None:
        """Called once the connection is up, before any request is served."""

    def on_disconnect(self, conn: Connection) -> None:
        """Called once when the connection closes, whichever side closed it."""

    @classmethod
    def get_service_name(cls) -> str:
        name = cls.__name__
        return (name[: -len("Service")] if name.endswith("Service") and name != "Service"
                else name).upper()


class VoidService(Service):
    """Exposes nothing: the default for clients."""


class ModuleNamespace:
    """``conn.modules.os`` / ``conn.modules["os.path"]``: the peer's modules, imported on use."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Any:
        module = sys.modules.get(name)
        if module is None:
            module = importlib.import_module(name)
        return module

    def __contains__(self, name: str) -> bool:
        return name in sys.modules

    def __dir__(self) -> list[str]:
        return sorted(n for n in sys.modules if "." not in n)

    def __repr__(self) -> str:
        return "<modules of the remote interpreter>"


_sources = itertools.count(1)


def _remember_source(source: str, kind: str) -> str:
    """A unique filename whose lines tracebacks can show (as IPython does for cells)."""
    filename = f"<remote-{kind}-{next(_sources)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return filename


class ClassicService(Service):
    """The whole interpreter: modules, eval, execute, namespace, builtins, and the cell
    interpreter used by ``%%remote`` and the proxy kernel. Full trust: all attributes."""

    _protocol_config: ClassVar[dict[str, Any]] = {
        "allow_all_attrs": True,
        "allow_setattr": True,
        "allow_delattr": True,
        "allow_public_attrs": True,
    }

    def __init__(self) -> None:
        self.exposed_namespace: dict[str, Any] = {"__name__": "__main__",
                                                  "__builtins__": builtins}
        self.exposed_modules = ModuleNamespace()
        self.exposed_builtins = builtins
        self._interpreter: Any = None

    def exposed_eval(self, source: str) -> Any:
        code = compile(source, _remember_source(source, "eval"), "eval")
        return eval(code, self.exposed_namespace)  # noqa: S307 - the classic service's job

    def exposed_execute(self, source: str) -> None:
        code = compile(source, _remember_source(source, "execute"), "exec")
        exec(code, self.exposed_namespace)  # noqa: S102

    @property
    def exposed_interpreter(self) -> Any:
        if self._interpreter is None:
            from remote_kernel.remote.interpreter import Interpreter

            self._interpreter = Interpreter(self.exposed_namespace)
        return self._interpreter

    def on_disconnect(self, conn: Connection) -> None:
        if self._interpreter is not None:
            self._interpreter.close()  # its widgets no longer reach anyone

    def exposed_getpid(self) -> int:
        import os

        return os.getpid()


SlaveService = ClassicService  # RPyC's old name


def make_service(service: Any) -> Service:
    """An instance for one connection: a class is instantiated, an instance is shared."""
    if isinstance(service, type):
        return service()
    if service is None:
        return VoidService()
    return service


__all__ = ["ClassicService", "ModuleNamespace", "Service", "VoidService", "exposed",
           "make_service"]

"""The notebook's connections: names, targets, states; shared by the magics, the kernel
loop and the JupyterLab panel (``get_registry()``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from remote_kernel.core.connection import Connection
from remote_kernel.core.group import Member, fan_out
from remote_kernel.core.service import ClassicService, VoidService
from remote_kernel.errors import (
    ConnectionClosed,
    GroupError,
    RemoteKernelError,
    RequestTimeout,
)
from remote_kernel.net.targets import (
    discovery_module,
    find_discovered,
    open_target,
    parse,
    read_token_file,
)

log = logging.getLogger("remote_kernel.ipython")

# One vocabulary with Connection.state, %remote list and the lab panel: "open";
# "unreachable" (the link went silent; the session is kept and resumed when it returns);
# "resuming" (the resume handshake runs on a new link); "closed".
OPEN, UNREACHABLE, RESUMING, CLOSED = "open", "unreachable", "resuming", "closed"


class ConnectionEntry:
    """One named connection of this notebook."""

    def __init__(self, name: str, target: str, token_file: str | None, service: str,
                 trusted: bool = False) -> None:
        self.name = name
        self.trusted = trusted  # the peer's output is published unfiltered
        self.target = target
        self.token_file = token_file
        self.service = service
        self.state = CLOSED
        self.since = time.monotonic()  # when the state last changed
        self.conn: Connection | None = None
        self.latency: float | None = None
        self.error: str = ""
        # The notebook cell running on this connection: {"count": n, "code": first line}.
        self.running: dict[str, Any] | None = None
        self._interpreter: Any = None

    def stats(self) -> dict[str, int]:
        stats = self.conn.stats if self.conn is not None else {}
        return {key: int(stats.get(key, 0)) for key in ("requests", "bytes_in", "bytes_out")}

    @property
    def interpreter(self) -> Any:
        """The peer's cell interpreter (a netref), fetched once per connection."""
        if self._interpreter is None:
            self._interpreter = self.require().root.interpreter
        return self._interpreter

    def forget_interpreter(self) -> None:
        """Drop the cached interpreter netref (a new connection has its own)."""
        self._interpreter = None

    def set_state(self, state: str, error: str = "") -> None:
        if state != self.state:
            self.state = state
            self.since = time.monotonic()
        self.error = error

    @property
    def state_text(self) -> str:
        """The state as a user reads it: "unreachable for 12 s" while it lasts."""
        if self.state in (UNREACHABLE, RESUMING):
            return f"{self.state} for {time.monotonic() - self.since:.0f} s"
        return self.state

    def require(self) -> Connection:
        """The connection, while it is not closed (an unreachable one: calls wait for it)."""
        if self.conn is None or self.conn.closed or self.state == CLOSED:
            reason = f" ({self.error})" if self.error else ""
            raise ConnectionClosed(
                f"connection {self.name!r} to {self.target} is {self.state}{reason}; "
                f"use %remote reconnect {self.name}"
            )
        return self.conn

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "state": self.state,
                "since": round(time.monotonic() - self.since, 1), "latency": self.latency, "peer": self.conn.peer if self.conn else "",
                "error": self.error, "trusted": self.trusted, "running": self.running,
                **self.stats()}


def open_connection(target: str, token_file: str | None = None,
                    service: str = "void", trusted: bool = False, tls: Any = None) -> Connection:
    """Connect to anything ``%remote connect`` accepts (net/targets.py), a name advertised
    on the network included. ``tls`` is the user's TLS setting (a connection file brings its
    own); an advertisement never changes it."""
    token = read_token_file(token_file) if token_file else None
    return open_target(parse(target), service=ClassicService if service == "classic"
                       else VoidService, token=token, tls=tls, trust_output=trusted,
                       discover=True)


def default_name(target: str) -> str:
    """The variable a connection to ``target`` is bound to unless named (``Target.variable_name``)."""
    return parse(target).variable_name


class ConnectionRegistry:
    def __init__(self) -> None:
        self.entries: dict[str, ConnectionEntry] = {}
        self.current: str | None = None
        self._listeners: list[Callable[[], None]] = []
        self.loop: Any = None  # the kernel's IOLoop, set by the loop module
        self.on_open: list[Callable[[ConnectionEntry], None]] = []
        self.groups: dict[str, list[str]] = {}  # `%remote group NAME a b c`

    # -- listeners ------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def changed(self) -> None:
        """Tell listeners, in the kernel's main thread when there is one."""
        if self.loop is not None and threading.current_thread() is not threading.main_thread():
            self.loop.add_callback(self._notify)
        else:
            self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("registry listener failed")

    # -- connections ---------------------------------------------------------------------------

    def get(self, name: str | None = None) -> ConnectionEntry:
        name = name or self.current
        if name is None:
            raise KeyError("no remote connection yet: use %remote connect TARGET")
        try:
            return self.entries[name]
        except KeyError:
            known = ", ".join(self.entries) or "none"
            raise KeyError(f"no connection named {name!r} (known: {known})") from None

    def connected(self, target: str, name: str | None = None) -> ConnectionEntry | None:
        """The live connection to ``target`` that ``connect(target, name)`` would duplicate
        (answering a ping now), or None."""
        entry = self.entries.get(name or default_name(target))
        if entry is None or entry.target != target or entry.state != OPEN:
            return None
        try:
            self.ping(entry.name)
        except RemoteKernelError:
            return None
        return entry

    def connect(self, target: str, name: str | None = None, token_file: str | None = None,
                service: str = "void", trusted: bool = False) -> ConnectionEntry:
        if name is None:
            name = base = default_name(target)
            n = 1
            while name in self.entries and self.entries[name].state != CLOSED:
                n += 1
                name = f"{base}{n}"
        old = self.entries.get(name)
        if old is not None and old.conn is not None and not old.conn.closed:
            old.conn.close("replaced by a new connection")
        entry = ConnectionEntry(name, target, token_file, service, trusted)
        self._open(entry)
        self.entries[name] = entry
        self.current = name
        self.changed()
        return entry

    def connect_many(self, targets: Sequence[str], token_file: str | None = None,
                     service: str = "void", trusted: bool = False) -> list[ConnectionEntry]:
        """Connect several targets at once, each named as ``connect`` would name it. Those
        that opened are registered even when others failed; then GroupError names those."""
        taken = {name for name, entry in self.entries.items() if entry.state != CLOSED}
        fresh: dict[str, ConnectionEntry] = {}
        for target in targets:
            name = base = default_name(target)
            n = 1
            while name in taken:
                n += 1
                name = f"{base}{n}"
            taken.add(name)
            fresh[name] = ConnectionEntry(name, target, token_file, service, trusted)
        opened, errors = fan_out({
            name: (lambda entry=entry: open_connection(entry.target, entry.token_file,
                                                       entry.service, entry.trusted))
            for name, entry in fresh.items()})
        entries = []
        for name, conn in opened.items():
            old = self.entries.get(name)
            if old is not None and old.conn is not None and not old.conn.closed:
                old.conn.close("replaced by a new connection")
            entry = fresh[name]
            self._adopt(entry, conn)
            self.entries[name] = entry
            self.current = name
            entries.append(entry)
        self.changed()
        if errors:
            raise GroupError({fresh[name].target: exc for name, exc in errors.items()},
                             {entry.target: entry for entry in entries})
        return entries

    def _open(self, entry: ConnectionEntry) -> None:
        self._adopt(entry, open_connection(entry.target, entry.token_file, entry.service,
                                                    entry.trusted))

    def _adopt(self, entry: ConnectionEntry, conn: Connection) -> None:
        entry.conn = conn
        entry.set_state(OPEN)
        entry.forget_interpreter()
        conn.on_close.append(lambda closed, entry=entry: self._closed(entry, closed))
        conn.on_state.append(
            lambda state, entry=entry, conn=conn: self._state_changed(entry, conn, state))
        for callback in list(self.on_open):
            callback(entry)

    def _state_changed(self, entry: ConnectionEntry, conn: Connection, state: str) -> None:
        if entry.conn is not conn or state == CLOSED:  # (closing is _closed's)
            return
        entry.set_state(state)
        self.changed()

    def _closed(self, entry: ConnectionEntry, conn: Connection) -> None:
        if entry.conn is not conn:
            return
        if entry.state != CLOSED:
            entry.set_state(CLOSED, conn.close_reason)
        self.changed()

    def close(self, name: str) -> None:
        entry = self.get(name)
        entry.set_state(CLOSED)
        if entry.conn is not None:
            entry.conn.close()
        del self.entries[entry.name]
        if self.current == entry.name:
            self.current = next(reversed(self.entries), None) if self.entries else None
        self.changed()

    def reconnect(self, name: str | None = None) -> ConnectionEntry:
        """A new session on the entry's target (the old one, if any, is closed)."""
        entry = self.get(name)
        if entry.conn is not None and not entry.conn.closed:
            entry.set_state(CLOSED)
            entry.conn.close("reconnecting")
        entry.set_state(CLOSED)
        self.changed()
        try:
            self._open(entry)
        except Exception as exc:
            entry.set_state(CLOSED, str(exc))
            self.changed()
            raise
        self.current = entry.name
        self.changed()
        return entry

    def ping(self, name: str | None = None, timeout: float = 3.0) -> float:
        entry = self.get(name)
        try:
            entry.latency = entry.require().ping(timeout)
        except ConnectionClosed as exc:
            if entry.state != CLOSED:
                entry.set_state(CLOSED, str(exc))
            self.changed()
            raise
        except RequestTimeout:
            self.changed()
            raise
        self.changed()
        return entry.latency

    def close_all(self) -> None:
        for name in list(self.entries):
            self.close(name)
        self.groups.clear()

    # -- groups and running cells ------------------------------------------------------------

    def set_running(self, names: Sequence[str], cell: dict[str, Any] | None) -> None:
        """Mark (or with None, unmark) the cell running on these connections."""
        for name in names:
            entry = self.entries.get(name)
            if entry is not None:
                entry.running = cell
        self.changed()

    def member(self, item: Any) -> Member | None:
        """A group member for a connection name or a Connection of this registry (the
        group does not own it), or None: ``rk.Group`` finds notebook connections this way."""
        if isinstance(item, str):
            entry = self.entries.get(item)
            return Member(entry.name, entry.require(), owned=False) if entry else None
        if isinstance(item, Connection):
            for entry in self.entries.values():
                if entry.conn is item:
                    return Member(entry.name, item, owned=False)
        return None


_registry: ConnectionRegistry | None = None


def get_registry() -> ConnectionRegistry:
    global _registry
    if _registry is None:
        _registry = ConnectionRegistry()
    return _registry


def reset_registry() -> None:
    """Close everything and forget (used by %unload_ext)."""
    global _registry
    if _registry is not None:
        _registry.close_all()
    _registry = None


__all__ = ["CLOSED", "OPEN", "RESUMING", "UNREACHABLE", "ConnectionEntry",
           "ConnectionRegistry", "discovery_module", "find_discovered", "get_registry",
           "open_connection"]

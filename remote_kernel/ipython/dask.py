"""``%remote connect dask:tcp://HOST:8786 [--name NAME]`` and ``%remote connect dask:client``.

The target binds a :class:`~remote_kernel.net.dask.DaskGroup` to NAME (``dask`` by default)
and mirrors it in the notebook's registry: each worker is a connection entry (named after
the worker, ``w0``...) and NAME is a registry group, so ``%%remote NAME`` runs on every
worker with the labelled fan-out output, ``%remote list`` and the lab panel show the
workers. The mirror follows the group: a worker that joins gets an entry and joins the
registry group; one that leaves stays listed as ``gone`` and leaves the group. Closing the
group (``NAME.close()``, ``%unload_ext``) removes its entries.
"""

from __future__ import annotations

import keyword
import threading
from typing import Any

from remote_kernel.ipython.registry import CLOSED, ConnectionEntry, ConnectionRegistry

PREFIX = "dask:"
GONE = "gone"

# The notebook's Dask groups, closed with the extension.
_groups: list[Any] = []


def is_dask_target(target: str) -> bool:
    return target.startswith(PREFIX)


def _spec_to_client(spec: str, namespace: dict[str, Any]) -> Any:
    """A Client from the user's namespace (``dask:client``) or the scheduler address."""
    if spec.isidentifier() and not keyword.iskeyword(spec):
        if spec not in namespace:
            raise ValueError(f"dask:{spec}: no variable {spec!r} here; give a distributed."
                             f"Client variable or a scheduler address (dask:tcp://HOST:8786)")
        return namespace[spec]
    if not spec:
        raise ValueError("dask: needs a scheduler address (dask:tcp://HOST:8786) or the name "
                         "of a Client variable (dask:client)")
    return spec


def _free_name(registry: ConnectionRegistry, base: str) -> str:
    name, n = base, 1
    while name in registry.groups or name in registry.entries:
        n += 1
        name = f"{base}{n}"
    return name


class RegistryMirror:
    """Keeps the registry's entries and group for one DaskGroup in step with it."""

    def __init__(self, registry: ConnectionRegistry, group: Any) -> None:
        self.registry = registry
        self.group = group
        self.entry_names: dict[str, str] = {}  # member name -> registry entry name

    def _entry_name(self, member: str) -> str:
        known = self.entry_names.get(member)
        if known is not None:
            return known
        name = member
        if name in self.registry.entries or name in self.registry.groups:
            name = f"{self.group.name}_{member}"  # another connection has the worker's name
        self.entry_names[member] = name
        return name

    def __call__(self, group: Any) -> None:
        registry = self.registry
        if registry.loop is not None and threading.current_thread() is not \
                threading.main_thread():  # the kernel's thread owns the registry
            registry.loop.add_callback(self.update, group)
        else:
            self.update(group)

    def update(self, group: Any) -> None:
        registry = self.registry
        if group.closed:
            self.remove()
            return
        connections = group.connections
        for member, info in group.members.items():
            name = self._entry_name(member)
            entry = registry.entries.get(name)
            conn = connections.get(member)
            if info.state != GONE and conn is not None:
                if entry is None or entry.conn is not conn:
                    entry = ConnectionEntry(name, f"{PREFIX}{info.address}", None, "void")
                    registry._adopt(entry, conn)
                    registry.entries[name] = entry
            elif entry is not None:  # (the group's own word is "gone"; a connection's, closed)
                entry.set_state(CLOSED, f"worker {info.address} left the cluster")
        registry.groups[group.name] = [self._entry_name(member) for member in group.names]
        registry.changed()

    def remove(self) -> None:
        registry = self.registry
        for name in self.entry_names.values():
            entry = registry.entries.pop(name, None)
            if entry is not None and entry.state != CLOSED:
                entry.set_state(CLOSED)
        registry.groups.pop(self.group.name, None)
        if registry.current not in registry.entries:
            registry.current = next(reversed(registry.entries), None) if registry.entries \
                else None
        registry.changed()


def connect(registry: ConnectionRegistry, target: str, name: str | None,
            namespace: dict[str, Any]) -> Any:
    """Open a Dask group for ``target`` (``dask:ADDRESS`` or ``dask:VARIABLE``), mirror it
    in ``registry`` and return it (the caller binds it to its name)."""
    from remote_kernel.net.dask import from_dask

    client = _spec_to_client(target[len(PREFIX):], namespace)
    group_name = name or _free_name(registry, "dask")
    if group_name in registry.entries:
        raise ValueError(f"{group_name!r} is a connection; choose another --name for the group")
    old = next((group for group in _groups if group.name == group_name), None)
    if old is not None:
        old.close()
    group = from_dask(client, name=group_name)
    mirror = RegistryMirror(registry, group)
    group.on_change.append(mirror)
    mirror.update(group)
    _groups.append(group)
    return group


def describe(group: Any) -> str:
    live = ", ".join(f"{name} ({info.address})" for name, info in group.members.items()
                     if info.state != GONE)
    return f"Dask group {group.name}: {len(group.names)} workers ({live}), bound to " \
           f"`{group.name}`; %%remote {group.name} runs on each"


def close_all() -> None:
    """Close every Dask group of the notebook (the extension is unloaded)."""
    while _groups:
        _groups.pop().close()


__all__ = ["RegistryMirror", "close_all", "connect", "describe", "is_dask_target"]

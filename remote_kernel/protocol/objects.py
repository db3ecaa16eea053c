"""The local objects a peer holds references to (the REFs this side sent), counted."""

from __future__ import annotations

import itertools
import threading
import types
from collections.abc import Callable
from typing import Any

from remote_kernel.errors import ProtocolError


class ObjectTable:
    """Local objects the peer holds references to, with reference counts.

    Ids come from a counter, never from ``id()``, so a freed id cannot be confused with a
    new object. The same live object always gets the same id, and so does the same bound
    method: ``obj.method`` is a new object at each access, and a peer asking for it a
    million times must not get a million entries. ``origin()``, when given, is called when
    an object is first sent; what it returns (where the object came from, such as the
    notebook cell that sent it) is kept with it while the peer holds it.
    """

    def __init__(self, origin: Callable[[], Any] | None = None) -> None:
        self._objects: dict[int, list[Any]] = {}  # oid -> [obj, count, key]
        self._oid_of: dict[Any, int] = {}  # key -> oid, valid while obj is held
        self._origins: dict[int, Any] = {}  # oid -> origin, for objects that have one
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.origin = origin

    def add(self, obj: Any) -> int:
        with self._lock:
            key: Any = id(obj)
            oid = self._oid_of.get(key)
            if oid is None and type(obj) in _BOUND_TYPES:
                key = _bound_key(obj)
                oid = self._oid_of.get(key)
            if oid is not None:
                self._objects[oid][1] += 1
                return oid
            oid = next(self._counter)
            self._objects[oid] = [obj, 1, key]
            self._oid_of[key] = oid
            if self.origin is not None:
                origin = self.origin()
                if origin is not None:
                    self._origins[oid] = origin
            return oid

    def get(self, oid: int) -> Any:
        try:
            return self._objects[oid][0]
        except KeyError:
            raise ProtocolError(f"unknown object id {oid}") from None

    def origin_of(self, obj: Any) -> Any:
        """The origin recorded when ``obj`` was first sent, or None."""
        if not self._origins:
            return None
        oid = self._oid_of.get(id(obj))
        entry = self._objects.get(oid) if oid is not None else None
        if entry is None or entry[0] is not obj:
            return None
        return self._origins.get(oid)

    def decref(self, oid: int, count: int) -> None:
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None:
                return
            entry[1] -= count
            if entry[1] <= 0:
                del self._objects[oid]
                self._oid_of.pop(entry[2], None)
                self._origins.pop(oid, None)

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()
            self._oid_of.clear()
            self._origins.clear()

    def __len__(self) -> int:
        return len(self._objects)


_BOUND_TYPES = frozenset({types.MethodType, types.BuiltinMethodType, types.MethodWrapperType})


def _bound_key(method: Any) -> tuple:
    """What makes two bound methods the same (the table keeps the first one, and with it
    the objects whose ids this names)."""
    function = getattr(method, "__func__", None)
    return (id(getattr(method, "__self__", None)),
            id(function) if function is not None else getattr(method, "__name__", ""))

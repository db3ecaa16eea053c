"""Helpers that work on netrefs: obtain, deliver, async_."""

from __future__ import annotations

from typing import Any

from remote_kernel.connection import AsyncResult, Connection
from remote_kernel.netref import BaseNetref, RemoteMethod
from remote_kernel.protocol.boxing import ByValue, Kwargs
from remote_kernel.protocol.messages import Op


def obtain(obj: Any) -> Any:
    """A local copy of a remote object, by value (containers of values, numpy arrays,
    buffers). ``TypeError`` if it holds something that cannot be copied. A local object is
    returned as it is."""
    if isinstance(obj, RemoteMethod):
        raise TypeError("a remote method cannot be copied by value")
    if not isinstance(obj, BaseNetref):
        return obj
    return obj._rk_conn.sync_request(Op.OBTAIN, obj)


def deliver(conn: Connection, obj: Any) -> Any:
    """Copy ``obj`` by value to the peer of ``conn``; returns a netref to the copy."""
    if isinstance(obj, BaseNetref) and obj._rk_conn is conn:
        return obj
    return conn.sync_request(Op.DELIVER, ByValue(obj))


class _AsyncCaller:
    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        target = self._target
        kw = Kwargs(kwargs) if kwargs else None
        if isinstance(target, RemoteMethod):
            owner = target._rk_owner
            return owner._rk_conn.async_request(Op.CALLATTR, owner, target._rk_name, args, kw)
        return target._rk_conn.async_request(Op.CALL, target, args, kw)

    def __repr__(self) -> str:
        return f"async_({self._target!r})"


def async_(proxy: Any) -> _AsyncCaller:
    """Wrap a remote callable: calling the wrapper sends the request and returns an
    :class:`AsyncResult` at once."""
    if isinstance(proxy, _AsyncCaller):
        return proxy
    if not isinstance(proxy, (BaseNetref, RemoteMethod)):
        raise TypeError(f"async_ needs a remote callable (a netref), got {type(proxy).__name__}")
    return _AsyncCaller(proxy)

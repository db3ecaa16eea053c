"""Helpers that work on netrefs: obtain, deliver, async_."""

from __future__ import annotations

import os
import sys
from typing import Any

from remote_kernel.core.asyncresult import AsyncResult
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import BaseNetref, RemoteMethod
from remote_kernel.errors import ProtocolError
from remote_kernel.protocol.boxing import ByValue, Kwargs
from remote_kernel.protocol.messages import Op
from remote_kernel.protocol.values import LARGE_MARKER

LARGE = 4 * 1024 * 1024  # buffers above this come in chunks, with a progress bar
CHUNK = 4 * 1024 * 1024


def obtain(obj: Any, progress: bool | None = None) -> Any:
    """A local copy of a remote object, by value (containers of values, numpy arrays,
    buffers). ``TypeError`` if it holds something that cannot be copied. A local object is
    returned as it is.

    A numpy array or buffer over 4 MiB comes in chunks; ``progress`` shows a tqdm bar
    (default: in a notebook when tqdm is installed). Ctrl-C / Stop interrupts it."""
    if isinstance(obj, RemoteMethod):
        raise TypeError("a remote method cannot be copied by value")
    if not isinstance(obj, BaseNetref):
        return obj
    conn = obj._rk_conn
    value = conn.sync_request(Op.OBTAIN, obj, LARGE)
    if type(value) is tuple and len(value) == 5 and value[0] == LARGE_MARKER:
        return _obtain_in_chunks(conn, obj, value, progress)
    return value


def _progress_bar(total: int, enabled: bool | None) -> Any:
    if enabled is None:
        # Only a running kernel shows a bar; IPython is asked only if it is already loaded
        # (a server on a small board may not have it at all).
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        enabled = shell is not None and getattr(shell, "kernel", None) is not None
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="obtain")


def _obtain_in_chunks(conn: Connection, obj: Any, marker: tuple, progress: bool | None) -> Any:
    _, kind, dtype, shape, nbytes = marker
    _check_announced(conn, kind, dtype, shape, nbytes)
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    bar = _progress_bar(nbytes, progress)
    try:
        offset = 0
        while offset < nbytes:
            wanted = min(CHUNK, nbytes - offset)
            chunk = conn.sync_request(Op.READ, obj, offset, wanted)
            if type(chunk) is not bytes or not 0 < len(chunk) <= wanted:
                size = len(chunk) if isinstance(chunk, bytes) else type(chunk).__name__
                raise ProtocolError(f"{conn.peer} answered a read of {wanted} bytes at "
                                    f"{offset} with {size}")
            view[offset:offset + len(chunk)] = chunk
            offset += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if kind == "ndarray":
        try:
            import numpy
        except ImportError:
            raise TypeError("the peer sent a numpy array; install numpy to copy it "
                            "(pip install numpy)") from None

        return numpy.frombuffer(buffer, dtype=numpy.dtype(dtype)).reshape(shape)
    if kind == "bytearray":
        return buffer
    return bytes(buffer)


def _check_announced(conn: Connection, kind: Any, dtype: Any, shape: Any, nbytes: Any) -> None:
    """What the peer announced must be consistent, and fit ``max_message_size`` and the
    memory this machine has free, before a byte of it is allocated."""
    if kind not in ("ndarray", "bytes", "bytearray") or type(nbytes) is not int or nbytes < 0 \
            or type(dtype) is not str or type(shape) is not tuple \
            or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"{conn.peer} announced a malformed transfer")
    limit = conn.config.max_message_size
    if nbytes > limit:
        raise ProtocolError(f"{conn.peer} announced {nbytes} bytes, over max_message_size "
                            f"({limit} bytes); raise it in config= to copy this")
    free = _free_memory()
    if free is not None and nbytes > free:
        raise MemoryError(f"{conn.peer} announced {nbytes} bytes; only {free} are free here")


def _free_memory() -> int | None:
    """Memory available for a new allocation (Linux's MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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

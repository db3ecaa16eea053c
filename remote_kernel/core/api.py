"""Helpers that work on netrefs: obtain, deliver, async_, batch."""

from __future__ import annotations

import bisect
import itertools
import os
import sys
import time
from collections import deque
from typing import Any

from remote_kernel.core.asyncresult import AsyncResult
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import BaseNetref, RemoteMethod
from remote_kernel.errors import ProtocolError, RemoteKernelError, RequestTimeout, rendered_by
from remote_kernel.protocol import uninit
from remote_kernel.protocol.boxing import OOB_MIN, BatchCalls, ByValue, Kwargs
from remote_kernel.protocol.landing import Landing
from remote_kernel.protocol.messages import Op
from remote_kernel.protocol.values import (
    LARGE_MARKER,
    MAX_READ,
    check_available,
    decode_planned,
    is_pandas,
)

DEFAULT: Any = object()  # "the connection's own timeout"
LARGE = 4 * 1024 * 1024  # buffers above this come in chunks, with a progress bar
CHUNK = 4 * 1024 * 1024  # the first READs ask for this much, and no READ for less
CHUNK_SECONDS = 0.1  # later READs ask for about this long a transfer at the rate seen


def obtain(obj: Any, progress: bool | None = None) -> Any:
    """A local copy of a remote object, by value: containers of values, numpy arrays of any
    non-object dtype, masked arrays, pandas DataFrames/Series/Index, buffers.
    ``TypeError`` if it holds something that cannot be copied. A local object is returned
    as it is.

    A value over 4 MiB comes in chunks; ``progress`` shows a tqdm bar (default: in a
    notebook when tqdm is installed). Ctrl-C / Stop interrupts it."""
    if isinstance(obj, RemoteMethod):
        raise TypeError("a remote method cannot be copied by value")
    if not isinstance(obj, BaseNetref):
        return obj
    conn = obj._rk_conn
    try:
        value = conn.sync_request(Op.OBTAIN, obj, LARGE)
    except RemoteKernelError as exc:
        exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
        raise
    if type(value) is tuple and len(value) == 5 and value[0] == LARGE_MARKER:
        parts = list(value)
        del value  # the snapshot's netref lives in ``parts`` alone, released when done
        return _obtain_in_chunks(conn, parts, progress)
    check_available(value)
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


def _destination(code: Any, sizes: tuple[int, ...]) -> tuple[list[Any], list[memoryview]]:
    """Where the chunks of a large value go, and writable views of it: uninitialised
    memory (every byte is written by a chunk), and for a bytes value the final bytes
    object itself (see protocol/uninit.py)."""
    if not uninit.AVAILABLE:
        buffers: list[Any] = [bytearray(size) for size in sizes]
        return buffers, [memoryview(buffer) for buffer in buffers]
    if code == "bytes" and len(sizes) == 1 and sizes[0] >= uninit.MIN_SIZE:
        value, view = uninit.new_bytes(sizes[0])
        return [value], [view]
    buffers = [uninit.new_bytearray(size) for size in sizes]
    return buffers, [memoryview(buffer) for buffer in buffers]


READS_AHEAD = 3  # READs in flight: the server always has the next chunk to send, and a
# Stop drains at most this many chunks before the connection carries the next call.


class _Read:
    """One READ in flight: where its chunk goes (pieces of the destination buffers) and
    the memory offered for it, if it lands in place."""

    __slots__ = ("landing", "length", "pieces", "result")

    def __init__(self, pieces: list[tuple[int, int, int]], length: int,
                 landing: Landing | None) -> None:
        self.pieces = pieces
        self.length = length
        self.landing = landing
        self.result: AsyncResult | None = None

    def end(self, conn: Connection) -> None:
        """Nothing more may land in this READ's memory; its reply, if it still comes, is
        dropped."""
        if self.landing is not None:
            self.landing.withdraw()
        if self.result is not None:
            conn.forget(self.result)


def _pieces(starts: list[int], sizes: tuple[int, ...], offset: int,
            length: int) -> list[tuple[int, int, int]]:
    """(buffer index, position, length) of each part of the buffers, laid end to end, that
    the bytes [offset, offset + length) fall in."""
    pieces = []
    index = max(0, bisect.bisect_right(starts, offset) - 1)
    while length:
        while offset - starts[index] >= sizes[index]:  # (empty buffers take nothing)
            index += 1
        position = offset - starts[index]
        take = min(length, sizes[index] - position)
        pieces.append((index, position, take))
        offset += take
        length -= take
    return pieces


def _send_read(conn: Connection, snapshot: Any, buffers: list[Any], views: list[memoryview],
               starts: list[int], sizes: tuple[int, ...], offset: int, length: int) -> _Read:
    """Ask for up to ``length`` bytes at ``offset``: less when a large enough rest of the
    buffer it starts in ends sooner, so that every large buffer's chunks land in place. A
    chunk that lies in one buffer and is large enough to travel out of band is offered the
    part of that buffer it fills, to be received there (the offer holds ``buffer``: a view
    may be a raw one that keeps nothing alive, see uninit.new_bytes); smaller chunks come
    inside the reply message."""
    pieces = _pieces(starts, sizes, offset, length)
    rest = pieces[0][2]
    if len(pieces) > 1 and rest >= OOB_MIN:
        pieces, length = pieces[:1], rest
    landing = None
    if len(pieces) == 1 and length >= OOB_MIN:
        index, position, _ = pieces[0]
        landing = Landing(buffers[index], views[index][position:position + length])
    read = _Read(pieces, length, landing)
    read.result = conn.async_request(Op.READ, snapshot, offset, length, into=landing)
    return read


def _receive(conn: Connection, read: _Read, views: list[memoryview]) -> None:
    """Wait for a READ's chunk and put it in place: it landed there, or it came as bytes
    of exactly the length asked for (anything else is the peer's error)."""
    result = read.result
    assert result is not None
    timeout = conn.config.sync_request_timeout
    try:
        result.wait(timeout)
    except RequestTimeout:
        raise rendered_by(RequestTimeout(f"no reply from {conn.peer} within {timeout} s"),
                          conn._hooks.error_rendering) from None
    chunk = result.value
    landing = read.landing
    if landing is not None and chunk is landing.view:  # received in place
        landing.view.release()
        return
    if type(chunk) is not bytes or len(chunk) != read.length:
        raise ProtocolError(f"{conn.peer} answered a READ with a malformed chunk")
    done = 0
    for index, position, length in read.pieces:
        views[index][position:position + length] = chunk[done:done + length]
        done += length


def _next_chunk(length: int, seconds: float) -> int:
    """How much the next READ asks for: about CHUNK_SECONDS of transfer at the rate the
    last chunk came (``length`` bytes in ``seconds``), in whole MiB, from CHUNK to the
    most a READ answers. A fast link takes few READs (each costs a request and a reply
    on both sides); a slow one keeps the progress bar moving, and a Stop drains at most
    READS_AHEAD chunks before the connection carries the next call."""
    wanted = CHUNK if seconds <= 0 else int(length / seconds * CHUNK_SECONDS)
    return max(CHUNK, min(MAX_READ, wanted) & ~((1 << 20) - 1))


def _obtain_in_chunks(conn: Connection, parts: list, progress: bool | None) -> Any:
    """READ the snapshot an OBTAIN announced, chunk by chunk, into one buffer per array,
    allocated once its size was checked against ``max_message_size`` and free memory (each
    chunk is then written in place: no regrowth, no extra copy). ``READS_AHEAD`` READs are
    in flight at a time, so chunks follow each other without a round trip between them;
    each reply is matched to its READ by its request number. Chunks grow with the rate
    they arrive at (``_next_chunk``)."""
    _, code, fields, sizes, snapshot = parts
    parts.clear()
    if type(sizes) is not tuple or not all(type(n) is int and n >= 0 for n in sizes) \
            or not isinstance(snapshot, BaseNetref):
        raise ProtocolError(f"{conn.peer} announced a malformed large value")
    total = sum(sizes)
    _check_announced(conn, total)
    buffers, views = _destination(code, sizes)
    starts = list(itertools.accumulate(sizes, initial=0))[:-1]
    bar = _progress_bar(total, progress)
    in_flight: deque[_Read] = deque()
    chunk = CHUNK
    try:
        offset = 0
        while offset < total or in_flight:
            while offset < total and len(in_flight) < READS_AHEAD:
                read = _send_read(conn, snapshot, buffers, views, starts, sizes, offset,
                                  min(chunk, total - offset))
                in_flight.append(read)
                offset += read.length
                if len(in_flight) == 1:
                    since = time.monotonic()
            read = in_flight[0]
            _receive(conn, read, views)
            read.end(conn)
            in_flight.popleft()
            now = time.monotonic()
            chunk = _next_chunk(read.length, now - since)
            since = now
            if bar is not None:
                bar.update(read.length)
    finally:
        for read in in_flight:  # given up (Stop, a timeout, an error): nothing lands here
            read.end(conn)
        in_flight.clear()
        if bar is not None:
            bar.close()
        for buffer_view in views:
            buffer_view.release()  # the buffers may be resized by whoever gets them
        del snapshot  # the peer frees its snapshot with this release, sent right away
        conn._flush_releases()
    try:
        return decode_planned(code, fields, buffers)
    except (ValueError, IndexError) as exc:
        raise ProtocolError(f"{conn.peer} sent a malformed large value: {exc}") from None


def array_of(netref: Any, dtype: Any = None) -> Any:
    """``numpy.asarray(netref)`` of a remote numpy array or scalar: one OBTAIN, a local
    ndarray. Whatever the peer answers is decoded as data only (no code of the peer runs
    here); anything but a numpy array or scalar is refused."""
    import numpy

    value = obtain(netref)
    if not issubclass(type(value), (numpy.ndarray, numpy.generic)):
        raise TypeError(f"{netref._rk_conn.peer} answered for an array with a "
                        f"{type(value).__name__}")
    return numpy.asarray(value, dtype=dtype)


def pandas_array_of(netref: Any, dtype: Any = None) -> Any:
    """``numpy.asarray(netref)`` of a remote DataFrame, Series or Index: one OBTAIN (the
    TypeError of ``obtain`` when it cannot be copied), then pandas' own ``to_numpy()``.
    Anything but a pandas object in the reply is refused."""
    import numpy

    value = obtain(netref)
    if not is_pandas(value):
        raise TypeError(f"{netref._rk_conn.peer} answered for a pandas object with a "
                        f"{type(value).__name__}")
    array = value.to_numpy() if dtype is None else value.to_numpy(dtype=dtype)
    return numpy.asarray(array)


def _check_announced(conn: Connection, nbytes: int) -> None:
    """What the peer announced must fit ``max_message_size`` and the memory this machine
    has free (buffers grow with what arrives; this refuses a transfer that cannot end)."""
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
    try:
        return conn.sync_request(Op.DELIVER, ByValue(obj))
    except RemoteKernelError as exc:
        exc.__traceback__ = None  # as netref.py's "Tracebacks": no frames of ours
        raise


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


_NOTHING = object()


class Batch:
    """Calls collected inside ``with rk.batch(conn) as batch:``, sent as ONE request when the
    block ends and answered in ONE reply; the calls run in order on the peer. Each
    :meth:`call` returns an :class:`AsyncResult` that is ready after the block: its value, or
    its own remote exception (the other calls still ran). If the block raises, nothing is
    sent and every result fails with ``RemoteKernelError``."""

    def __init__(self, conn: Connection, timeout: float | None | object = DEFAULT) -> None:
        self._conn = conn
        self._timeout = timeout
        self._calls: list[tuple[Any, str | None, tuple, Kwargs | None]] = []
        self._results: list[AsyncResult] = []
        self._sent = False
        self._last_function: Any = _NOTHING
        self._last_target: tuple[Any, str | None] = (None, None)

    def call(self, function: Any, *args: Any, **kwargs: Any) -> AsyncResult:
        """Queue ``function(*args, **kwargs)``; ``function`` is a remote callable of this
        batch's connection (a netref or a netref's method)."""
        if self._sent:
            raise RemoteKernelError("this batch was already sent; start a new `with rk.batch`")
        if function is self._last_function:  # the same callable again: checked already
            owner, name = self._last_target
        else:
            owner, name = self._target_of(function)
            self._last_function, self._last_target = function, (owner, name)
        self._calls.append((owner, name, args, Kwargs(kwargs) if kwargs else None))
        result = AsyncResult(self._conn, 0)
        self._results.append(result)
        return result

    def _target_of(self, function: Any) -> tuple[BaseNetref, str | None]:
        """The proxy a remote callable belongs to, and the method name (None: call it)."""
        if isinstance(function, RemoteMethod):
            owner, name = function._rk_owner, function._rk_name
        elif isinstance(function, BaseNetref):
            owner, name = function, None
        else:
            raise TypeError(f"batch.call needs a remote callable (a netref), got "
                            f"{type(function).__name__}")
        if owner._rk_conn is not self._conn:
            raise ValueError(f"this batch is for {self._conn.peer}; the callable lives on "
                             f"{owner._rk_conn.peer}")
        return owner, name

    def __len__(self) -> int:
        return len(self._calls)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._sent = True
        if exc_type is not None:
            self._fail_all(RemoteKernelError("the batch was not sent: its block raised"))
            return
        if not self._calls:
            return
        try:
            kwargs = {} if self._timeout is DEFAULT else {"timeout": self._timeout}
            outcomes = self._conn.sync_request(Op.BATCH, BatchCalls(self._calls), **kwargs)
        except BaseException as error:
            self._fail_all(error)
            raise
        checked = _checked_outcomes(outcomes, len(self._results))
        if checked is None:
            error = ProtocolError(f"malformed batch reply from {self._conn.peer}")
            self._fail_all(error)
            raise error
        AsyncResult.set_outcomes(self._results, checked)

    def _fail_all(self, error: BaseException) -> None:
        for result in self._results:
            result.set_outcome((False, error))


def _checked_outcomes(outcomes: Any, count: int) -> Any:
    """A batch reply: one (1, value) or (0, exception) pair per call (the 1 or 0 serves as
    the outcome's ok flag as it is); None if it is malformed."""
    if type(outcomes) is not tuple or len(outcomes) != count:
        return None
    for item in outcomes:
        if type(item) is not tuple or len(item) != 2:
            return None
        ok = item[0]
        if type(ok) is not int or not (ok == 1 or ok == 0 and isinstance(item[1],
                                                                       BaseException)):
            return None
    return outcomes


def batch(conn: Connection, timeout: float | None | object = DEFAULT) -> Batch:
    """``with rk.batch(conn) as batch: r = batch.call(fn, *args)`` — see :class:`Batch`.
    ``timeout``: seconds for the one request, None to wait as long as it takes (default:
    the connection's ``sync_request_timeout``)."""
    if not isinstance(conn, Connection):
        raise TypeError(f"rk.batch needs a Connection, got {type(conn).__name__}")
    return Batch(conn, timeout)

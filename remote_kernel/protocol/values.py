"""By-value codecs for values that are not msgpack natives: numpy arrays (every non-object
dtype), masked arrays, pandas DataFrame/Series/Index, and large values read in chunks.
This module is the entry point (detection, dispatch, the wire layouts below, chunked
snapshots); ``ndarrays.py`` holds the numpy codec and ``dataframes.py`` the pandas one.

Never pickle, never ``eval``: a value travels as plain data (strings, integers, tuples) plus
raw buffers, and is rebuilt from that data by code of this module only. numpy and pandas are
imported only when such a value is actually met, so a server without them never loads them.

Wire layouts
------------
Each is the msgpack array inside its ext type (``messages.Ext``). A *buffer* is where raw
bytes go: the Boxer puts inline ``bin`` bytes or a BUFFER ext (out of band) there; a chunked
obtain (``large_plan``) puts the index of a buffer of its :class:`Snapshot` there.

``NDARRAY`` ``[dtype, shape, scalar, buffer, order]``
    *dtype* is a simple dtype as numpy writes it (``dtype.str``: byte order, kind, item size
    and datetime unit, e.g. ``"<f8"``, ``"|b1"``, ``">i4"``, ``"<M8[ns]"``, ``"<m8[25s]"``,
    ``"|S5"``, ``"<U3"``, ``"|V8"``), checked against a pattern before numpy sees it; or a
    structured dtype as data: ``["struct", itemsize, aligned, record, [[name, title, format,
    offset], ...]]`` where *format* is a dtype or ``["sub", dtype, shape]`` (a subarray).
    Object dtypes (``O``) have no layout: they are refused. *shape* is a list of sizes;
    *scalar* says a numpy scalar was sent (a 0-d array on the wire); *order* is ``"C"`` or
    ``"F"``: a Fortran-ordered array travels in its own order and comes back Fortran-ordered
    (no copy on either side); any other layout (a strided view) is copied once into C order.
    Byte order is part of the dtype and is kept as it is. A ``numpy.recarray`` travels as an
    array of its record dtype and comes back as a recarray; ``numpy.memmap`` comes back as a
    plain array (the copy is in memory). Other ndarray subclasses (``numpy.matrix``, unit
    arrays) are refused: dropping what the subclass adds would change the value silently.
``MASKED`` ``[data, mask, fill_value, hard_mask]``
    *data* in the NDARRAY layout; *mask* the same for the (boolean, or structured boolean)
    mask, or nil for ``nomask``; *fill_value* a 0-d array of the data's dtype.
    ``["constant"]`` is ``numpy.ma.masked``.
``PANDAS`` ``[kind, ...]``
    ``["frame", [column...], columns_index, index]``, ``["series", values, index, name]``
    or ``["index", ...]`` / ``["range", start, stop, step, name]`` /
    ``["multi", [level_index...], [codes...], [name...]]`` for an Index. A column (*values*)
    is ``["numpy", ndarray]`` (int, float, bool, complex, naive datetime64/timedelta64),
    ``["datetimetz", ndarray of UTC datetime64, tz]`` (*tz* ``["utc"]``, ``["pytz-utc"]``,
    ``["offset", seconds]``, ``["zoneinfo", key]`` or ``["pytz", name]``: a zone keeps its
    kind, as pandas 2 counts a pytz and a zoneinfo zone of one name as different dtypes), ``["category", codes, categories_index,
    ordered]``, ``["masked", dtype_name, data, mask]`` (nullable Int64/Float64/boolean...)
    or ``["strings", dtype, utf8_bytes, offsets, missing]`` (``str``/``string`` columns, and
    object columns that hold only strings and missing values). Names and labels are None,
    bool, int, float, str or tuples of them.

Why numpy columns and not Arrow IPC: pyarrow is a large optional dependency that a small
server (a Raspberry Pi next to an instrument) often lacks and that pandas does not require;
numpy is what pandas itself stores most columns in, so a column travels as its own buffer
with no conversion and no new hard dependency. Arrow would add string and nested types
cheaply, but only when both sides have it; strings here travel Arrow-style anyway (UTF-8
bytes plus offsets). A ``str`` column backed by pyarrow comes back with pyarrow storage when
pyarrow is importable here and with python storage otherwise (as pandas itself chooses).

What cannot travel (object arrays, object columns holding anything but strings, period,
interval, sparse and Arrow-typed columns, unknown time zone types) raises ``TypeError`` naming
the column or dtype. Decoding trusts nothing: every field is checked, a dtype is built only
from the allowed kinds, and every array's size must equal the bytes that arrived for it, so
memory is bounded by what the peer sent.
"""

from __future__ import annotations

import bisect
from typing import Any

from remote_kernel.protocol import uninit
from remote_kernel.protocol.dataframes import encode_pandas, is_pandas, pandas_from
from remote_kernel.protocol.messages import Ext
from remote_kernel.protocol.ndarrays import (
    MissingLibrary,
    Put,
    Take,
    array_from,
    encode_numpy,
    is_numpy,
    masked_from,
)

LARGE_MARKER = "__rk_large_buffer__"
CODES = frozenset({int(Ext.NDARRAY), int(Ext.MASKED), int(Ext.PANDAS)})
MAX_READ = 64 * 1024 * 1024  # bytes in one READ reply
_NUMPY_CODES = {"ndarray": int(Ext.NDARRAY), "masked": int(Ext.MASKED)}


class Unavailable:
    """Stands for a received value that could not be rebuilt here: the message stays
    readable (the connection is fine), and :func:`check_available` raises for it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"<value not available here: {self.reason}>"


def check_available(value: Any, depth: int = 0) -> None:
    """Raise ``TypeError`` if ``value`` is, or (in a container copied by value) holds, an
    :class:`Unavailable`."""
    if type(value) is Unavailable:
        raise TypeError(value.reason)
    if depth > 64:
        return
    if type(value) in (list, tuple, set, frozenset):
        for item in value:
            check_available(item, depth + 1)
    elif type(value) is dict:
        for key, item in value.items():
            check_available(key, depth + 1)
            check_available(item, depth + 1)


def is_codec_value(obj: Any) -> bool:
    """True when :func:`encode` is the way to copy ``obj`` (it may still refuse it)."""
    return is_numpy(obj) or is_pandas(obj)


def encode(obj: Any, put: Put) -> tuple[int, tuple]:
    """(ext code, fields) of a numpy or pandas value; ``put(view)`` places each buffer.
    ``TypeError`` naming what cannot be copied."""
    if is_pandas(obj):
        return int(Ext.PANDAS), encode_pandas(obj, put)
    kind, fields = encode_numpy(obj, put)
    return _NUMPY_CODES[kind], fields


def decode(code: int, fields: Any, take: Take) -> Any:
    """The value that :func:`encode` described. ``take(item)`` returns the bytes of a
    buffer field. ``ValueError`` (or ``TypeError``) if anything is malformed;
    :class:`MissingLibrary` if this side lacks what is needed to rebuild it."""
    if type(fields) is not tuple:
        raise ValueError("value fields must be an array")
    if code == Ext.NDARRAY:
        return array_from(fields, take)
    if code == Ext.MASKED:
        return masked_from(fields, take)
    if code == Ext.PANDAS:
        return pandas_from(fields, take)
    raise ValueError(f"unknown value code {code}")


# -- large values in chunks ----------------------------------------------------------------


class Snapshot:
    """The buffers of one large value, taken once when it is obtained, read in chunks
    (READ) until the client drops its reference. Writable memory is copied once when the
    snapshot is taken, so every chunk of one transfer comes from the same moment (the
    owner may change the array meanwhile); read-only buffers (bytes) are read in place."""

    __slots__ = ("views", "sizes", "_starts")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.sizes = tuple(view.nbytes for view in views)
        starts, position = [], 0
        for size in self.sizes:
            starts.append(position)
            position += size
        self._starts = starts

    @property
    def nbytes(self) -> int:
        return sum(self.sizes)

    def read(self, offset: Any, length: Any) -> bytes | memoryview:
        """Bytes [offset, offset+length) of the buffers laid end to end: a view when they
        lie in one buffer (sent as it is), else a copy of the pieces joined."""
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise ValueError("READ needs a non-negative offset and length")
        end = min(offset + min(length, MAX_READ), self.nbytes)
        parts = []
        index = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while offset < end and index < len(self.views):
            start = self._starts[index]
            view = self.views[index]
            stop = min(end - start, view.nbytes)
            if offset - start < stop:
                parts.append(view[offset - start:stop])
                offset = start + stop
            index += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __repr__(self) -> str:
        return f"<snapshot of {len(self.views)} buffer(s), {self.nbytes} bytes>"


def nbytes_estimate(obj: Any) -> int:
    """About how many bytes copying ``obj`` by value takes (0 if not a codec value)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return memoryview(obj).nbytes
    if is_numpy(obj):
        import numpy

        size = int(obj.nbytes)
        if isinstance(obj, numpy.ma.MaskedArray):
            size += int(numpy.ma.getmaskarray(obj).nbytes)
        return size
    if is_pandas(obj):
        usage = obj.memory_usage(deep=True)
        return int(usage.sum()) if hasattr(usage, "sum") else int(usage)
    return 0


def _frozen(view: memoryview) -> memoryview:
    """``view`` as it is now: a copy unless nobody can write to it. The copy is ``bytes``,
    so its chunks go out as bytes values (received in place, see uninit.py), made with
    huge pages when large (``uninit.copy_bytes``)."""
    return view if view.readonly else memoryview(uninit.copy_bytes(view))


def large_plan(obj: Any, limit: int) -> tuple[Any, tuple, Snapshot] | None:
    """For a value over ``limit`` bytes: (code, fields with buffer indices, snapshot), to
    be read in chunks; None for anything smaller (it goes inline) or not a codec value."""
    if nbytes_estimate(obj) <= limit:
        return None
    if type(obj) in (bytes, bytearray, memoryview):
        kind = "bytearray" if type(obj) is bytearray else "bytes"
        return kind, (0,), Snapshot([_frozen(memoryview(obj).cast("B"))])
    views: list[memoryview] = []

    def put(view: memoryview) -> int:
        views.append(_frozen(view))
        return len(views) - 1

    code, fields = encode(obj, put)
    return code, fields, Snapshot(views)


def decode_planned(code: Any, fields: Any, buffers: list[bytearray]) -> Any:
    """The value of a chunked obtain, from its fields and downloaded buffers."""
    def take(index: Any) -> bytearray:
        if type(index) is not int or not 0 <= index < len(buffers):
            raise ValueError("reference to a missing buffer")
        return buffers[index]

    if code in ("bytes", "bytearray"):
        if fields != (0,) or len(buffers) != 1:
            raise ValueError("malformed buffer plan")
        return buffers[0] if code == "bytearray" else bytes(buffers[0])
    if type(code) is not int or code not in CODES:
        raise ValueError("malformed value plan")
    return decode(code, fields, take)


__all__ = ["CODES", "LARGE_MARKER", "MissingLibrary", "Snapshot", "Unavailable",
           "check_available", "decode", "decode_planned", "encode", "is_codec_value",
           "is_numpy", "is_pandas", "large_plan", "nbytes_estimate"]

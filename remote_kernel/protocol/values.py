"""By-value codecs for values that are not msgpack natives: numpy arrays and raw buffers.

Never pickle: an array travels as its dtype string, shape and raw bytes (out of band when
large), and is rebuilt with ``numpy.frombuffer``. numpy is imported only when an array is
actually met, so a server without numpy never loads it.
"""

from __future__ import annotations

import sys
from typing import Any

LARGE_MARKER = "__rk_large_buffer__"


def is_numpy(obj: Any) -> bool:
    """True for numpy arrays and scalars, without importing numpy when it is not loaded."""
    module = type(obj).__module__
    if not module.startswith("numpy") or "numpy" not in sys.modules:
        return False
    import numpy

    return isinstance(obj, (numpy.ndarray, numpy.generic))


def array_parts(obj: Any) -> tuple[str, list[int], bool, memoryview]:
    """(dtype string, shape, is-a-scalar, flat bytes) of a numpy array or scalar."""
    import numpy

    array = numpy.asarray(obj)
    if array.dtype.hasobject or array.dtype.fields is not None:
        raise TypeError(f"cannot copy a numpy array of dtype {array.dtype} by value")
    data = numpy.ascontiguousarray(array).reshape(-1)  # (0-d arrays come back 1-d)
    return array.dtype.str, list(array.shape), isinstance(obj, numpy.generic), \
        memoryview(data).cast("B")


def array_from_parts(dtype_str: Any, shape: Any, scalar: Any, raw: Any) -> Any:
    """The array (or scalar) that :func:`array_parts` described; TypeError/ValueError if bad."""
    try:
        import numpy
    except ImportError:
        raise TypeError("the peer sent a numpy array but numpy is not installed") from None
    dtype = numpy.dtype(dtype_str)
    if dtype.hasobject:
        raise TypeError("object arrays are refused")
    array = numpy.frombuffer(raw, dtype=dtype).reshape(shape)
    if not isinstance(raw, bytearray):
        array = array.copy()  # writable, not a view of the message
    return array[()] if scalar else array


def buffer_view(obj: Any) -> tuple[memoryview, tuple]:
    """A flat byte view of a numpy array or bytes-like object, with what rebuilds it."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        view = memoryview(obj).cast("B")
        return view, ("bytes" if isinstance(obj, bytes) else type(obj).__name__, "", ())
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        import numpy

        if obj.dtype.hasobject or obj.dtype.fields is not None:
            raise TypeError(f"cannot copy a numpy array of dtype {obj.dtype} by value")
        flat = numpy.ascontiguousarray(obj).reshape(-1)
        return memoryview(flat).cast("B"), ("ndarray", obj.dtype.str, tuple(obj.shape))
    raise TypeError("not a buffer")

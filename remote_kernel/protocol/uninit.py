"""Buffers to receive into without first filling them with zeros.

``bytearray(n)`` writes n zeros that the receive overwrites at once, and a ``bytes`` value
received into a bytearray costs a full copy more. On CPython, the C API makes both
uninitialised: ``PyByteArray_FromStringAndSize(NULL, n)``, and
``PyBytes_FromStringAndSize(NULL, n)`` plus a writable view of the new object's storage,
which the C API allows while its creator holds the only reference and has not hashed it.
The decoder keeps that reference until the last byte is in and then hands the object over;
nothing else ever sees it half-written.

Where the C API is not reachable (no ``ctypes.pythonapi``, another interpreter) or does not
behave as checked at import, :data:`AVAILABLE` is False and the callers fall back to a
zero-filled ``bytearray`` (and a copy for ``bytes``).
"""

from __future__ import annotations

PyBUF_WRITE = 0x200

try:
    import ctypes
    import sys

    if sys.implementation.name != "cpython":
        raise ImportError("not CPython")
    _api = ctypes.pythonapi
    _new_bytes = _api.PyBytes_FromStringAndSize
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _new_bytes.restype = ctypes.py_object
    _new_bytearray = _api.PyByteArray_FromStringAndSize
    _new_bytearray.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    _new_bytearray.restype = ctypes.py_object
    _storage = _api.PyBytes_AsString
    _storage.argtypes = (ctypes.py_object,)
    _storage.restype = ctypes.c_void_p
    _memory_view = _api.PyMemoryView_FromMemory
    _memory_view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    _memory_view.restype = ctypes.py_object
except (ImportError, AttributeError, OSError):
    _new_bytes = None

MIN_SIZE = 2  # CPython shares its 0- and 1-byte bytes objects: never write into those


def new_bytes(size: int) -> tuple[bytes, memoryview]:
    """An uninitialised ``bytes`` of ``size`` bytes and a writable view of its storage.
    The view does not keep the object alive: hold the object while the view is in use,
    release the view before letting the object go, and hash nothing meanwhile."""
    if size < MIN_SIZE:
        raise ValueError("too small to be written in place")
    value = _new_bytes(None, size)
    return value, _memory_view(_storage(value), size, PyBUF_WRITE)


def new_bytearray(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes, uninitialised."""
    return _new_bytearray(None, size)


def _works() -> bool:
    if _new_bytes is None:
        return False
    try:
        value, view = new_bytes(5)
        with view:
            view[:] = b"hello"
        array = new_bytearray(3)
        array[:] = b"abc"
        return (type(value) is bytes and value == b"hello" and hash(value) == hash(b"hello")
                and type(array) is bytearray and len(array) == 3)
    except Exception:  # noqa: BLE001 - any surprise: use the portable path
        return False


AVAILABLE = _works()

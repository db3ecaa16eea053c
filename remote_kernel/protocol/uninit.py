"""Buffers to receive into without first filling them with zeros.

``bytearray(n)`` writes n zeros that the receive overwrites at once, and a ``bytes`` value
received into a bytearray costs a full copy more. On CPython, the C API makes both
uninitialised: ``PyByteArray_FromStringAndSize(NULL, n)``, and
``PyBytes_FromStringAndSize(NULL, n)`` plus a writable view of the new object's storage,
which the C API allows while its creator holds the only reference and has not hashed it.
The decoder keeps that reference until the last byte is in and then hands the object over;
nothing else ever sees it half-written.

Large buffers (from 4 MiB, numpy's own threshold) are also advised to use transparent huge
pages where Linux offers them (``madvise(MADV_HUGEPAGE)``, what numpy does for its arrays):
filling 64 MiB of fresh 4 KiB pages costs 16,384 page faults, about four times the copy itself.
These are the buffers a peer's data is received into, and the copies a sender makes of
mutable data (the obtain snapshot, what a session keeps for re-sending): benchmarks/
FINDINGS.md (session 5) measured both ends with huge pages at once this time.

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
    _bytearray_storage = _api.PyByteArray_AsString
    _bytearray_storage.argtypes = (ctypes.py_object,)
    _bytearray_storage.restype = ctypes.c_void_p
except (ImportError, AttributeError, OSError):
    _new_bytes = None

try:
    import ctypes
    import mmap
    import sys

    if not sys.platform.startswith("linux"):  # Windows: CDLL(None) is a TypeError there
        raise ImportError("madvise(MADV_HUGEPAGE) is Linux only")
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _madvise.restype = ctypes.c_int
    _MADV_HUGEPAGE = mmap.MADV_HUGEPAGE  # Linux only
    _PAGE = mmap.PAGESIZE
except (ImportError, AttributeError, OSError, TypeError):
    _madvise = None

MIN_SIZE = 2  # CPython shares its 0- and 1-byte bytes objects: never write into those
HUGE_MIN = 4 << 20  # from this size a buffer is advised to use huge pages (as numpy does)


def _advise_huge(address: int, size: int) -> None:
    """Ask for huge pages for the whole pages inside [address, address + size). A hint:
    a failure (no THP, an old kernel) changes nothing but speed."""
    if _madvise is None or size < HUGE_MIN:
        return
    start = (address + _PAGE - 1) & ~(_PAGE - 1)
    end = (address + size) & ~(_PAGE - 1)
    if end > start:
        _madvise(start, end - start, _MADV_HUGEPAGE)


def new_bytes(size: int) -> tuple[bytes, memoryview]:
    """An uninitialised ``bytes`` of ``size`` bytes and a writable view of its storage.
    The view (and any slice of it) does not keep the object alive: hold the object while
    the view is in use, release the view before letting the object go, and hash nothing
    meanwhile. A slice handed to another part travels with the object (landing.Landing)."""
    if size < MIN_SIZE:
        raise ValueError("too small to be written in place")
    value = _new_bytes(None, size)
    address = _storage(value)
    _advise_huge(address, size)
    return value, _memory_view(address, size, PyBUF_WRITE)


def copy_bytes(view: memoryview) -> bytes:
    """A ``bytes`` copy of the bytes of ``view`` (contiguous): written once into
    uninitialised memory, with huge pages asked for when it is large. ``bytes(view)`` of
    64 MiB spends most of its time faulting in fresh 4 KiB pages (3-4x this copy)."""
    size = view.nbytes
    if not AVAILABLE or size < HUGE_MIN:
        return bytes(view)
    copy, target = new_bytes(size)
    with target:
        target[:] = view if view.format == "B" and view.ndim == 1 else view.cast("B")
    return copy


def new_bytearray(size: int) -> bytearray:
    """A ``bytearray`` of ``size`` bytes, uninitialised."""
    array = _new_bytearray(None, size)
    if size >= HUGE_MIN:
        _advise_huge(_bytearray_storage(array), size)
    return array



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

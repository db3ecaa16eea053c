"""Proxy classes for the peer's objects.

Theory of operation
-------------------
The first time a remote type crosses a connection its descriptor arrives (see
``protocol.boxing``): module, qualified name, method names, the dunders it defines, flags.
:func:`class_for` builds one proxy class per descriptor and caches it in the connection, so
remote classes become local classes: ``isinstance(x, type(y))`` works and nothing is looked up
twice. The cache is keyed by what the peer sent, so it lives and dies with the connection
(whose count of peer types is bounded, see ``protocol.boxing``), never in the process.

What stays local (no request): the object's identity, ``__class__``, IPython's probes
(``_ipython_*``, ``_repr_*`` except the one ``_repr_mimebundle_`` that makes the single
display request), and hooks through which a peer could make us run its code uninvited
(``__array__`` and friends, pickling and copying hooks).

The one exception is ``__array__`` on proxies of numpy arrays and scalars (the remote type
is ``numpy.ndarray``, a masked array, a recarray or a numpy scalar type): it is a local
method that makes ONE OBTAIN request and builds a local ndarray from the data that comes
back, so ``numpy.asarray(proxy)`` and ``local_array + proxy`` copy by value in one request.
CVE-2024-27758 (RPyC) was numpy calling ``__array__`` through a netref and running what the
server returned. Here nothing is looked up on the peer and nothing it returns is called: the
reply is decoded as data only (values.py: no pickle, no eval, a dtype from allowed kinds,
sizes bounded by the bytes received) and must be a numpy array or scalar, else TypeError.
A hostile server can at most claim a numpy type for any object, which costs the client one
OBTAIN of a value the server chose; ``__array_interface__``, ``__array_struct__``,
``__array_ufunc__`` and the rest stay denied. Proxies of pandas DataFrame, Series and Index
answer ``__array__`` the same way: ONE OBTAIN, the reply must be a pandas object (else
TypeError), and the array is its ``to_numpy()``; what cannot be copied by value (an object
column holding other things than strings) is the TypeError of ``obtain``, never a partial
array. Without this hook numpy would iterate the proxy (a DataFrame gave its column names).
Proxies of a dict (or a dict subclass of ``collections``, or a mappingproxy) answer it
locally with a 0-d object array holding the proxy, as numpy does for a local dict (numpy
would otherwise take the proxy for a sequence and iterate its keys). Other sequences (a
list, a deque, a range) are still iterated by numpy: correct values, a request per item;
``numpy.asarray(rk.obtain(x))`` copies them in one. What is forwarded: a method named in
the descriptor is called by name in ONE request (CALLATTR); any other attribute is ONE
GETATTR; the dunders the remote type defines become real methods, so ``len()``, operators,
``with`` and iteration work.

Tracebacks: an error of the peer (or of the link) leaves the package where the user's code
called it without the frames it gathered inside (the request, the wait): they say nothing
about the user's code, and the remote frames follow it anyway. Each entry point clears the
traceback and re-raises with a bare ``raise``, which on Python 3.11 and later adds no frame
of its own, so ``traceback.print_exc()``, ``logging.exception`` and pytest show the user's
frames, then the remote ones. (Python 3.10 re-raises with the traceback it caught: there the
frames stay.) Only the exception path pays: a ``try`` costs nothing on 3.11 and later.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

from remote_kernel.errors import RemoteKernelError
from remote_kernel.protocol.boxing import ByValue, Kwargs
from remote_kernel.protocol.describe import (
    FAKE_CLASSES,
    FLAG_BUFFERED_ITER,
    FLAG_TYPE,
    FLAG_UNHASHABLE,
    Descriptor,
)
from remote_kernel.protocol.messages import CALLATTR, Op
from remote_kernel.protocol.policy import FORWARDED_DUNDERS

if TYPE_CHECKING:
    from remote_kernel.core.connection import Connection

# Looked up on objects by numpy, pickle, copy, pandas and IPython; never forwarded.
LOCAL_DENIED = frozenset("""
__array__ __array_interface__ __array_struct__ __array_priority__ __array_function__
__array_ufunc__ __array_wrap__ __array_finalize__ __array_prepare__ __array_namespace__
__reduce__ __reduce_ex__ __getstate__ __setstate__ __getnewargs__ __getnewargs_ex__
__copy__ __deepcopy__ __del__ __dataframe__ __dlpack__ __dlpack_device__
__arrow_c_array__ __arrow_c_stream__ __arrow_c_schema__ __cuda_array_interface__
__fspath__ __html__ __wrapped__ __torch_function__ __jax_array__ __sklearn_tags__
__pandas_priority__ __geo_interface__ __await__ __aiter__ __anext__ _fields
__signature__ __text_signature__ __get__ __set__ __delete__ __set_name__ __buffer__
""".split())
LOCAL_PREFIXES = ("_ipython_", "_repr_", "_rk_")

# Remote types whose proxies answer ``numpy.asarray()`` with a by-value copy (see above).
NUMPY_ARRAY_TYPES = frozenset({
    ("numpy", "ndarray"), ("numpy", "memmap"), ("numpy.ma", "MaskedArray"),
    ("numpy.ma.core", "MaskedArray"), ("numpy.rec", "recarray"), ("numpy", "recarray"),
    ("numpy.core.records", "recarray"), ("numpy._core.records", "recarray"),
})
NUMPY_SCALAR_TYPES = frozenset("""
bool bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 intc uintc intp uintp byte ubyte
short ushort long ulong longlong ulonglong float16 float32 float64 longdouble half single
double complex64 complex128 clongdouble csingle cdouble datetime64 timedelta64 str_ bytes_
void record float96 float128 complex192 complex256
""".split())

# Remote types whose proxies answer ``numpy.asarray()`` with ``obtain(proxy).to_numpy()``.
PANDAS_TYPES = frozenset("""
DataFrame Series Index RangeIndex MultiIndex DatetimeIndex TimedeltaIndex PeriodIndex
CategoricalIndex IntervalIndex
""".split())
# Remote mappings that numpy, were they local, would not take for sequences.
MAPPING_TYPES = frozenset({
    ("builtins", "dict"), ("builtins", "mappingproxy"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"), ("collections", "Counter"),
})

BUFFER_CHUNK = 256
_SLOTS = frozenset({"_rk_conn", "_rk_oid", "_rk_refs", "_rk_buffer"})


def _is_local_name(name: str) -> bool:
    return name in LOCAL_DENIED or name.startswith(LOCAL_PREFIXES)


class BaseNetref:
    """A proxy of an object owned by the peer."""

    __slots__ = ("_rk_conn", "_rk_oid", "_rk_refs", "__weakref__")
    _rk_descriptor: Descriptor = ("", "", (), (), 0, "")
    _rk_builtin: type | None = None

    def __getattr__(self, name: str) -> Any:
        if _is_local_name(name):
            raise AttributeError(f"{name!r} is not forwarded to the peer")
        try:
            return self._rk_conn.sync_request(Op.GETATTR, self, name)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # see "Tracebacks" above
            raise

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SLOTS:
            object.__setattr__(self, name, value)
            return
        try:
            self._rk_conn.sync_request(Op.SETATTR, self, name, value)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # see "Tracebacks" above
            raise

    def __delattr__(self, name: str) -> None:
        if name in _SLOTS:
            object.__delattr__(self, name)
            return
        try:
            self._rk_conn.sync_request(Op.DELATTR, self, name)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # see "Tracebacks" above
            raise

    def __dir__(self) -> list[str]:
        return list(self._rk_conn.sync_request(Op.DIR, self))

    def __repr__(self) -> str:
        conn = self._rk_conn
        if conn.closed:
            return f"<remote {self._rk_descriptor[1]} object, connection lost>"
        return conn.sync_request(Op.REPR, self)

    def __str__(self) -> str:
        return self._rk_conn.sync_request(Op.STR, self)

    def __format__(self, spec: str) -> str:
        if not spec:
            return str(self)
        return self._rk_conn.sync_request(Op.CALLATTR, self, "__format__", (spec,), None)

    def __hash__(self) -> int:
        return self._rk_conn.sync_request(Op.HASH, self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a netref cannot be pickled; use remote_kernel.obtain() for a copy")

    def __reduce__(self) -> Any:
        raise TypeError("a netref cannot be pickled; use remote_kernel.obtain() for a copy")

    def __del__(self) -> None:
        # Runs inside the garbage collector: only queue; the connection sends batches.
        try:
            self._rk_conn._queue_release(self._rk_oid, self._rk_refs)
        except Exception:
            pass

    @property
    def __class__(self) -> type:  # type: ignore[override]
        cls = type(self)
        return cls._rk_builtin or cls

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        """The whole mimebundle, computed by the peer's formatters: one request. (The
        outputs of an object that displays itself are the IPython extension's to show,
        ipython/display.py; here it is its repr.)"""
        conn = self._rk_conn
        if conn.closed:
            return {"text/plain": f"<remote {self._rk_descriptor[1]} object, connection lost>"}
        reply = conn.display(self, include, exclude)
        return reply[0], reply[1]


class RemoteMethod:
    """``netref.name`` for a method named in the type descriptor; calling it is one request."""

    __slots__ = ("_rk_owner", "_rk_name")

    def __init__(self, owner: BaseNetref, name: str) -> None:
        self._rk_owner = owner
        self._rk_name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self._rk_owner
        try:
            return owner._rk_conn.sync_request(CALLATTR, owner, self._rk_name, args,
                                               Kwargs(kwargs) if kwargs else None)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # see "Tracebacks" above
            raise

    def __getattr__(self, name: str) -> Any:
        if _is_local_name(name):
            raise AttributeError(name)
        owner = self._rk_owner
        method = owner._rk_conn.sync_request(Op.GETATTR, owner, self._rk_name)
        return getattr(method, name)

    def __repr__(self) -> str:
        owner = self._rk_owner
        return (f"<remote method {owner._rk_descriptor[1]}.{self._rk_name} "
                f"of {owner._rk_conn.peer}>")


class _MethodStub:
    """Class attribute standing for a remote method; no request until it is called."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: BaseNetref | None, owner: type) -> Any:
        if instance is None:
            return self
        return RemoteMethod(instance, self.name)


def _by_value_if_builtin(value: Any) -> Any:
    """Local lists, dicts and sets go by value into binary operators, as the peer's own
    list.__eq__ cannot compare with a proxy."""
    if type(value) in (list, dict, set):
        return ByValue(value, soft=True)
    return value


def _make_forwarder(name: str) -> Any:
    def forward(self: BaseNetref, *args: Any) -> Any:
        try:
            return self._rk_conn.callattr(self, name, tuple(map(_by_value_if_builtin, args)),
                                          None)
        except RemoteKernelError as exc:
            exc.__traceback__ = None  # see "Tracebacks" above
            raise

    forward.__name__ = name
    return forward


def _call(self: BaseNetref, *args: Any, **kwargs: Any) -> Any:
    try:
        return self._rk_conn.sync_request(Op.CALL, self, args, kwargs or None)
    except RemoteKernelError as exc:
        exc.__traceback__ = None  # see "Tracebacks" above
        raise


def _exit(self: BaseNetref, exc_type: Any, exc: Any, tb: Any) -> Any:
    name = exc_type.__name__ if exc_type is not None else None
    message = str(exc) if exc is not None else None
    try:
        return self._rk_conn.sync_request(Op.CTXEXIT, self, name, message)
    except RemoteKernelError as exc:
        exc.__traceback__ = None  # see "Tracebacks" above
        raise


def _instancecheck(self: BaseNetref, obj: Any) -> bool:
    return self._rk_conn.sync_request(Op.INSTANCECHECK, self, obj, False)


def _subclasscheck(self: BaseNetref, cls: Any) -> bool:
    return self._rk_conn.sync_request(Op.INSTANCECHECK, self, cls, True)


def _iter_self(self: BaseNetref) -> Any:
    return self


def _buffered_next(self: Any) -> Any:
    buffer = self._rk_buffer
    if not buffer:
        items = self._rk_conn.sync_request(Op.BUFFITER, self, BUFFER_CHUNK)
        if not items:
            raise StopIteration
        buffer.extend(items)
    return buffer.popleft()


def _buffered_init(self: Any) -> None:
    object.__setattr__(self, "_rk_buffer", collections.deque())


def _array(self: BaseNetref, dtype: Any = None, copy: Any = None) -> Any:
    """numpy's ``__array__(dtype, copy)``: one OBTAIN, a local ndarray (see the module
    docstring for why this hook, alone of numpy's, is answered)."""
    if copy is False:
        raise ValueError("a remote array cannot be used without copying it here "
                         "(numpy.asarray(x, copy=False) of a netref)")
    from remote_kernel.core.api import array_of

    return array_of(self, dtype)


def _pandas_array(self: BaseNetref, dtype: Any = None, copy: Any = None) -> Any:
    """numpy's ``__array__`` of a remote DataFrame, Series or Index: one OBTAIN, then
    pandas' own ``to_numpy()`` of the local copy."""
    if copy is False:
        raise ValueError("a remote pandas object cannot be used without copying it here "
                         "(numpy.asarray(x, copy=False) of a netref)")
    from remote_kernel.core.api import pandas_array_of

    return pandas_array_of(self, dtype)


def _mapping_array(self: BaseNetref, dtype: Any = None, copy: Any = None) -> Any:
    """numpy's ``__array__`` of a remote dict: what numpy makes of a local one, a 0-d
    object array holding it (no request)."""
    import numpy

    result = numpy.empty((), dtype=object)
    result[()] = self
    return result if dtype is None else result.astype(dtype)


def is_pandas_type(module: str, qualname: str) -> bool:
    """Whether a remote type is pandas' DataFrame, Series or an Index, by its descriptor."""
    return (module == "pandas" or module.startswith("pandas.")) and qualname in PANDAS_TYPES


def is_numpy_array_type(module: str, qualname: str) -> bool:
    """Whether a remote type is a numpy array or scalar type, by its descriptor."""
    return (module, qualname) in NUMPY_ARRAY_TYPES or \
        (module == "numpy" and qualname in NUMPY_SCALAR_TYPES)


def _fetch_doc(self: BaseNetref) -> Any:
    return self._rk_conn.sync_request(Op.GETATTR, self, "__doc__")


# ``netref.__doc__`` is the remote object's docstring (one request, like RPyC).
_remote_doc = property(_fetch_doc, doc="the remote object's docstring")

def class_for(descriptor: Descriptor, cache: dict[Descriptor, type]) -> type:
    """The proxy class for a type descriptor; built once per ``cache`` (a connection's:
    proxies are only made while decoding, by the one thread holding the reader role)."""
    cls = cache.get(descriptor)
    if cls is None:
        cls = cache[descriptor] = _build_class(descriptor)
    return cls


def _build_class(descriptor: Descriptor) -> type:
    module, qualname, methods, dunders, flags, builtin_name = descriptor[:6]
    namespace: dict[str, Any] = {
        "__slots__": ("_rk_buffer",) if flags & FLAG_BUFFERED_ITER else (),
        "__module__": f"remote_kernel.core.netref.{module}",
        "__qualname__": str(qualname),
        "__doc__": _remote_doc,
        "_rk_descriptor": descriptor,
        "_rk_builtin": FAKE_CLASSES.get(builtin_name) if builtin_name else None,
    }
    for name in methods:
        if isinstance(name, str) and name.isidentifier() and not _is_local_name(name) \
                and not (name.startswith("__") and name.endswith("__")):
            namespace[name] = _MethodStub(name)
    for name in dunders:
        # Only the dunders we chose to forward, whatever the peer lists: a peer naming
        # __getattr__ or __getattribute__ must not get our lookups.
        if name not in FORWARDED_DUNDERS or _is_local_name(name):
            continue
        if name == "__call__":
            namespace[name] = _call
        elif name == "__exit__":
            namespace[name] = _exit
        elif name.startswith("__") and name.endswith("__"):
            namespace[name] = _make_forwarder(name)
    if "__next__" in dunders:
        namespace["__iter__"] = _iter_self
        if flags & FLAG_BUFFERED_ITER:
            namespace["__next__"] = _buffered_next
    if not flags & FLAG_TYPE:
        if is_numpy_array_type(module, qualname):
            namespace["__array__"] = _array
        elif is_pandas_type(module, qualname):
            namespace["__array__"] = _pandas_array
        elif (module, qualname) in MAPPING_TYPES:
            namespace["__array__"] = _mapping_array
    if flags & FLAG_TYPE:
        namespace["__instancecheck__"] = _instancecheck
        namespace["__subclasscheck__"] = _subclasscheck
    if flags & FLAG_UNHASHABLE:
        namespace["__hash__"] = None
    if "__eq__" in dunders and not flags & FLAG_UNHASHABLE:
        namespace["__hash__"] = BaseNetref.__hash__
    name = str(qualname).rsplit(".", 1)[-1] or "netref"
    cls = type(name if name.isidentifier() else "netref", (BaseNetref,), namespace)
    if flags & FLAG_BUFFERED_ITER:
        cls._rk_init = _buffered_init  # type: ignore[attr-defined]
    return cls


def new_proxy(conn: Connection, oid: int, descriptor: Descriptor,
              classes: dict[Descriptor, type]) -> BaseNetref:
    cls = classes.get(descriptor) or class_for(descriptor, classes)
    proxy = object.__new__(cls)
    object.__setattr__(proxy, "_rk_conn", conn)
    object.__setattr__(proxy, "_rk_oid", oid)
    object.__setattr__(proxy, "_rk_refs", 1)
    init = getattr(cls, "_rk_init", None)
    if init is not None:
        init(proxy)
    return proxy


def is_netref(obj: Any) -> bool:
    return isinstance(type(obj), type) and issubclass(type(obj), BaseNetref)


def netref_connection(obj: Any) -> Connection:
    if not is_netref(obj):
        raise TypeError(f"expected a netref, got {type(obj).__name__}")
    return obj._rk_conn


__all__ = ["BaseNetref", "RemoteMethod", "class_for", "is_netref", "new_proxy"]

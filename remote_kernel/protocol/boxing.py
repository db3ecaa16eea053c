"""Values by value, everything else by reference.

Theory of operation
-------------------
``Boxer.box`` turns a Python value into msgpack-ready data. The by-value types of the
design (None, bool, int of any size, float, complex, str, bytes, tuple, frozenset, slice,
Ellipsis) are encoded with their type: msgpack arrays *are* tuples (they decode as tuples),
and the rest use the ext types of ``messages.Ext``. Every other object is put in the local
:class:`ObjectTable` and sent as a REF: its object id and its type id. The first time a type
crosses the connection its descriptor travels with the REF; later REFs carry 12 bytes.
A proxy of the peer's object going back is a PEERREF and decodes to the original object.

Boxing happens under the connection's send lock and unboxing under its receive lock, so type
descriptors are always seen before the REFs that use them. Sending is all or nothing: what
boxing one message changed (types marked as described, object-table entries) is recorded and
undone by ``rollback()`` when that message is not sent.

Decoding is bounded by what arrived: a message holds at most ``MAX_ITEMS`` items (array
elements, map keys and values, nested ext values included), counted while it is decoded
(a payload shorter than that cannot hold more, so it takes the fast path); the peer's type
descriptors are capped per connection, and so is the cache of exception classes.

``box_value`` is the deep by-value encoding of ``obtain``/``deliver``: lists, dicts, sets,
bytearrays and numpy arrays (raw bytes + dtype + shape, never pickle) are copied.
"""

from __future__ import annotations

import builtins
import itertools
import struct
import threading
import traceback
import types
from collections.abc import Callable
from typing import Any

from msgpack import ExtType

from remote_kernel import errors
from remote_kernel.errors import ProtocolError, RemoteError, RemoteFrame
from remote_kernel.protocol.codec import ItemBudget, pack, unpack
from remote_kernel.protocol.describe import Descriptor
from remote_kernel.protocol.frames import user_frames
from remote_kernel.protocol.messages import Ext
from remote_kernel.protocol.values import array_from_parts, array_parts, is_numpy

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
REF = struct.Struct(">QI")
OID = struct.Struct(">Q")
COMPLEX = struct.Struct(">dd")
MAX_DEPTH = 64
MAX_DECODE_DEPTH = 32  # nested ext values (each is a C-level unpack: the C stack is finite)
MAX_ITEMS = 1 << 22  # items one decoded message may hold (4,194,304)
MAX_VALUE_ITEMS = MAX_ITEMS // 2  # items a sender packs by value in one message
MAX_PEER_TYPES = 16_384  # type descriptors a peer may send over one connection
MAX_PEER_TYPE_NAMES = 1_000_000  # method and dunder names in all of them together

_PASSTHROUGH = frozenset({str, float, bool, type(None)})
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_REF, _PEERREF = int(Ext.REF), int(Ext.PEERREF)


def _ext(code: int, data: bytes) -> ExtType:
    """ExtType without its Python-level argument checks, for the hot reference path."""
    return tuple.__new__(ExtType, (code, data))
OOB_MIN = 64 * 1024  # bytes payloads at least this large travel out of band



class ByValue:
    """A handler result to be sent as a deep copy (see Boxer.box_value)."""

    __slots__ = ("value", "soft")

    def __init__(self, value: Any, soft: bool = False) -> None:
        self.value = value
        self.soft = soft  # fall back to a reference when a copy is impossible


class Kwargs(dict):
    """Keyword arguments: sent as a msgpack map (a plain dict would go by reference)."""

    __slots__ = ()


class ObjectTable:
    """Local objects the peer holds references to, with reference counts.

    Ids come from a counter, never from ``id()``, so a freed id cannot be confused with a
    new object. The same live object always gets the same id, and so does the same bound
    method: ``obj.method`` is a new object at each access, and a peer asking for it a
    million times must not get a million entries.
    """

    def __init__(self) -> None:
        self._objects: dict[int, list[Any]] = {}  # oid -> [obj, count, key]
        self._oid_of: dict[Any, int] = {}  # key -> oid, valid while obj is held
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

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
            return oid

    def get(self, oid: int) -> Any:
        try:
            return self._objects[oid][0]
        except KeyError:
            raise ProtocolError(f"unknown object id {oid}") from None

    def decref(self, oid: int, count: int) -> None:
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None:
                return
            entry[1] -= count
            if entry[1] <= 0:
                del self._objects[oid]
                self._oid_of.pop(entry[2], None)

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()
            self._oid_of.clear()

    def __len__(self) -> int:
        return len(self._objects)


_BOUND_TYPES = frozenset({types.MethodType, types.BuiltinMethodType, types.MethodWrapperType})


def _bound_key(method: Any) -> tuple:
    """What makes two bound methods the same (the table keeps the first one, and with it
    the objects whose ids this names)."""
    function = getattr(method, "__func__", None)
    return (id(getattr(method, "__self__", None)),
            id(function) if function is not None else getattr(method, "__name__", ""))


def _builtin_exceptions() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }


_BUILTIN_EXCEPTIONS = _builtin_exceptions()
_OUR_ERRORS: dict[str, type[BaseException]] = {
    name: getattr(errors, name)
    for name in ("ProtocolError", "ConnectionClosed", "RequestTimeout",
                 "AuthenticationError", "AccessDenied", "RemoteKernelError")
}
# BaseExceptions outside Exception stay what they are: ``except Exception`` must not catch
# a remote KeyboardInterrupt.
_PLAIN = (KeyboardInterrupt,)  # a peer must not make us exit: SystemExit is a RemoteError
MAX_EXCEPTION_CLASSES = 1024  # per connection; the oldest is forgotten beyond that


def remote_exception_class(module: str, qualname: str, builtin_base: str = "",
                           cache: dict[tuple[str, str, str], type[BaseException]] | None = None
                           ) -> type[BaseException]:
    """The local class standing for a remote exception type. Never imports ``module``.
    A custom class also derives from its nearest builtin base (``builtin_base``), so
    ``except ValueError`` catches a remote subclass of ValueError. ``cache`` is the
    connection's (the names are the peer's choice: nothing of them is kept process-wide);
    it is used by the one thread that decodes for that connection."""
    key = (module, qualname, builtin_base)
    if cache is not None:
        cls = cache.get(key)
        if cls is not None:
            return cls
    base: type[BaseException] | None = None
    if module == "builtins":
        base = _BUILTIN_EXCEPTIONS.get(qualname)
    elif module == "remote_kernel.errors":
        base = _OUR_ERRORS.get(qualname)
    if base is None and builtin_base:
        base = _BUILTIN_EXCEPTIONS.get(builtin_base)
        if base is not None and (issubclass(base, _PLAIN) or base is Exception
                                 or base is BaseException):
            base = None  # a custom class is never a KeyboardInterrupt here
    name = qualname.rsplit(".", 1)[-1] or "RemoteException"
    namespace = {"__module__": module, "__qualname__": qualname}
    if base is not None and not issubclass(base, Exception) and not issubclass(base, _PLAIN):
        base = None  # SystemExit, GeneratorExit: a RemoteError like any other
    if base is not None and issubclass(base, _PLAIN):
        cls = type(name, (base,), namespace)
    else:
        bases = (RemoteError, base) if base is not None else (RemoteError,)
        try:
            cls = type(name, bases, namespace)
        except TypeError:  # an incompatible layout: keep the name, lose the base
            cls = type(name, (RemoteError,), namespace)
    if cache is not None:
        if len(cache) >= MAX_EXCEPTION_CLASSES:
            del cache[next(iter(cache))]
        cache[key] = cls
    return cls


def _checked_descriptor(descriptor: Any) -> Descriptor:
    """A peer's type descriptor, with every field of the expected type."""
    if type(descriptor) is not tuple or len(descriptor) < 6:
        raise ProtocolError("malformed type descriptor")
    module, qualname, methods, dunders, flags, builtin_name = descriptor[:6]
    if not (type(module) is str and type(qualname) is str and type(flags) is int
            and type(builtin_name) is str and type(methods) is tuple and type(dunders) is tuple
            and all(type(n) is str for n in methods) and all(type(n) is str for n in dunders)):
        raise ProtocolError("malformed type descriptor")
    return (module, qualname, methods, dunders, flags, builtin_name)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _frames_of(exc: BaseException) -> list[tuple[str, int, str, str]]:
    return user_frames(exc.__traceback__)  # our own plumbing is noise in a user's traceback


def _traceback_text(exc: BaseException) -> str:
    """The traceback as Python prints it, without machinery frames."""
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_list(_frames_of(exc))
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


class Boxer:
    """Encodes values for one connection and decodes what the peer sends.

    ``describe(cls)`` builds the descriptor of a local type; ``make_proxy(oid, descriptor)``
    returns the proxy of a peer object; ``proxy_oid(obj)`` is the peer's oid when ``obj``
    is a proxy of this connection, else None.
    """

    def __init__(
        self,
        table: ObjectTable,
        describe: Callable[[type], Descriptor],
        make_proxy: Callable[[int, Descriptor], Any],
        proxy_oid: Callable[[Any], int | None],
        peer_name: Callable[[], str],
        include_traceback: bool = True,
    ) -> None:
        self.table = table
        self._describe = describe
        self._make_proxy = make_proxy
        self._proxy_oid = proxy_oid
        self._peer_name = peer_name
        self.include_traceback = include_traceback
        self._type_ids: dict[type, int] = {}
        self._peer_types: dict[int, Descriptor] = {}
        self._peer_type_names = 0
        self._exception_classes: dict[tuple[str, str, str], type[BaseException]] = {}
        # What boxing the current message changed, undone if it is not sent.
        self._new_types: list[type] = []
        self._new_refs: list[int] = []
        self.items = 0  # items packed by value into the current message
        self._budget: ItemBudget | None = None  # set while a long payload is decoded
        # Out-of-band buffers of the message being encoded / decoded (send / receive lock).
        self.outgoing: list[Any] = []
        self.incoming: list[bytearray] = []
        self._raw_buffers = False  # True while decoding an array: keep the bytearray
        self._depth = 0

    # -- one message at a time -----------------------------------------------------------

    def begin(self) -> None:
        """A new message is being encoded (call under the send lock)."""
        if self._new_refs:
            self._new_refs.clear()
        if self._new_types:
            self._new_types.clear()
        self.items = 0

    def rollback(self) -> None:
        """The message was not sent: the peer never saw its type descriptors, and holds
        no reference to what it would have carried."""
        type_ids = self._type_ids
        for cls in self._new_types:
            type_ids.pop(cls, None)
        for oid in self._new_refs:
            self.table.decref(oid, 1)
        self._new_types.clear()
        self._new_refs.clear()
        self.outgoing = []

    def forget(self) -> None:
        """The connection closed: drop everything kept about the peer and its types."""
        self._type_ids = {}
        self._peer_types = {}
        self._peer_type_names = 0
        self._exception_classes = {}

    def _out_of_band(self, data: Any) -> ExtType:
        self.outgoing.append(data)
        return ExtType(Ext.BUFFER, OID.pack(len(self.outgoing) - 1))

    # -- encoding -------------------------------------------------------------------

    def box(self, obj: Any) -> Any:
        t = type(obj)
        if t in _PASSTHROUGH:
            return obj
        if t is bytes:
            return obj if len(obj) < OOB_MIN else self._out_of_band(obj)
        if t is int:
            if INT_MIN <= obj <= INT_MAX:
                return obj
            return ExtType(Ext.BIGINT, str(obj).encode())
        if t is tuple:
            self.items += len(obj)
            return [self.box(item) for item in obj]
        if t is complex:
            return ExtType(Ext.COMPLEX, COMPLEX.pack(obj.real, obj.imag))
        if t is frozenset:
            self.items += len(obj)
            return ExtType(Ext.FROZENSET, pack([self.box(item) for item in obj]))
        if t is slice:
            return ExtType(Ext.SLICE, pack([self.box(obj.start), self.box(obj.stop),
                                            self.box(obj.step)]))
        if obj is Ellipsis:
            return ExtType(Ext.ELLIPSIS, b"")
        if obj is NotImplemented:
            return ExtType(Ext.NOTIMPLEMENTED, b"")
        if t is ByValue:
            if not obj.soft:
                return self.box_value(obj.value)
            try:
                return self.box_value(obj.value)
            except TypeError:
                return self.box(obj.value)
        if t is Kwargs:
            self.items += 2 * len(obj)
            return {str(key): self.box(value) for key, value in obj.items()}
        oid = self._proxy_oid(obj)
        if oid is not None:
            return _ext(_PEERREF, OID.pack(oid))
        return self._box_ref(obj)

    def _box_ref(self, obj: Any) -> ExtType:
        cls = type(obj)
        oid = self.table.add(obj)
        self._new_refs.append(oid)
        tid = self._type_ids.get(cls)
        if tid is not None:
            return _ext(_REF, REF.pack(oid, tid))
        tid = len(self._type_ids) + 1
        self._type_ids[cls] = tid
        self._new_types.append(cls)
        return ExtType(Ext.REFDESC, pack([oid, tid, self._describe(cls)]))

    def box_value(self, obj: Any, depth: int = 0) -> Any:
        """A deep copy by value; ``TypeError`` for anything that cannot be copied."""
        if depth > MAX_DEPTH:
            raise TypeError("value nested too deeply to copy")
        t = type(obj)
        if t in _PASSTHROUGH or t is bytes or t is int or t is complex or t is slice \
                or obj is Ellipsis:
            return self.box(obj)
        if t in _CONTAINERS:
            self.items += len(obj) * (2 if t is dict else 1)
        if t is tuple:
            return [self.box_value(item, depth + 1) for item in obj]
        if t is list:
            return ExtType(Ext.LIST, pack([self.box_value(i, depth + 1) for i in obj]))
        if t is dict:
            flat: list[Any] = []
            for key, value in obj.items():
                flat.append(self.box_value(key, depth + 1))
                flat.append(self.box_value(value, depth + 1))
            return ExtType(Ext.DICT, pack(flat))
        if t is set:
            return ExtType(Ext.SET, pack([self.box_value(i, depth + 1) for i in obj]))
        if t is frozenset:
            return ExtType(Ext.FROZENSET, pack([self.box_value(i, depth + 1) for i in obj]))
        if t is bytearray:
            return ExtType(Ext.BYTEARRAY, pack(self.box(bytes(obj))))
        if t is memoryview:
            return self.box(obj.tobytes())
        if is_numpy(obj):
            return self._box_ndarray(obj)
        if self._proxy_oid(obj) is not None:
            return self.box(obj)
        raise TypeError(f"cannot copy a {t.__module__}.{t.__qualname__} object by value")

    def _box_ndarray(self, obj: Any) -> ExtType:
        dtype, shape, scalar, raw = array_parts(obj)
        body = self._out_of_band(raw) if raw.nbytes >= OOB_MIN else raw
        return ExtType(Ext.NDARRAY, pack([dtype, shape, scalar, body]))

    def box_exception(self, exc: BaseException) -> ExtType:
        cls = type(exc)
        module = getattr(cls, "__module__", "builtins") or "builtins"
        qualname = getattr(cls, "__qualname__", cls.__name__)
        message = _safe_str(exc)
        try:
            args = self.box_value(tuple(exc.args))
        except Exception:
            args = [message]
        text, frames = "", []
        if self.include_traceback:
            text = _traceback_text(exc)
            frames = _frames_of(exc)
            if isinstance(exc, RemoteError):
                text = (f"{exc.remote_traceback.rstrip()}\n\n"
                        f"... the exception above came from {exc.peer} and was re-raised:\n\n"
                        f"{text}")
                frames = [tuple(f) for f in exc.remote_frames] + frames
        builtin_base = next((klass.__name__ for klass in cls.__mro__
                             if klass.__module__ == "builtins"), "")
        return ExtType(Ext.EXC, pack([module, qualname, args, message, text, frames,
                                      builtin_base]))

    # -- decoding -------------------------------------------------------------------

    def decode(self, payload: bytes | bytearray | memoryview) -> Any:
        """One message. A payload of n bytes holds at most n items, so only one longer
        than MAX_ITEMS bytes has its items counted as they are decoded."""
        if len(payload) <= MAX_ITEMS:
            return unpack(payload, self.ext_hook)
        self._budget = ItemBudget(MAX_ITEMS)
        try:
            return unpack(payload, self.ext_hook, self._budget)
        finally:
            self._budget = None

    def _unpack(self, data: bytes) -> Any:
        """A value nested in an ext value: inside the budget of its message."""
        return unpack(data, self.ext_hook, self._budget)

    def ext_hook(self, code: int, data: bytes) -> Any:
        """Decode one ext value; anything malformed (or nested too deeply) is a
        ProtocolError, whatever the lower layer raised."""
        if self._depth >= MAX_DECODE_DEPTH:
            raise ProtocolError("values nested too deeply")
        self._depth += 1
        try:
            return self._decode_ext(code, data)
        except ProtocolError:
            raise
        except Exception as exc:  # struct.error, numpy's dtype parser, RecursionError...
            raise ProtocolError(f"malformed ext value {code}: {type(exc).__name__}: {exc}") \
                from None
        finally:
            self._depth -= 1

    def _decode_ext(self, code: int, data: bytes) -> Any:
        if code == Ext.REF:
            if len(data) != REF.size:
                raise ProtocolError("malformed reference")
            oid, tid = REF.unpack(data)
            descriptor = self._peer_types.get(tid)
            if descriptor is None:
                raise ProtocolError(f"reference to unknown type id {tid}")
            return self._make_proxy(oid, descriptor)
        if code == Ext.REFDESC:
            oid, tid, descriptor = self._unpack_tuple(data, length=3)
            if type(oid) is not int or type(tid) is not int or oid < 0 or tid < 0 \
                    or oid > INT_MAX or tid > 0xFFFFFFFF:
                raise ProtocolError("malformed reference")
            descriptor = self._remember_type(tid, _checked_descriptor(descriptor))
            return self._make_proxy(oid, descriptor)
        if code == Ext.PEERREF:
            if len(data) != OID.size:
                raise ProtocolError("malformed object id")
            return self.table.get(OID.unpack(data)[0])
        if code == Ext.BIGINT:
            try:
                return int(data.decode("ascii"))
            except ValueError:
                raise ProtocolError("malformed big integer") from None
        if code == Ext.COMPLEX:
            real, imag = COMPLEX.unpack(data)
            return complex(real, imag)
        if code == Ext.FROZENSET:
            return frozenset(self._unpack_tuple(data))
        if code == Ext.SLICE:
            start, stop, step = self._unpack_tuple(data, length=3)
            return slice(start, stop, step)
        if code == Ext.ELLIPSIS:
            return Ellipsis
        if code == Ext.NOTIMPLEMENTED:
            return NotImplemented
        if code == Ext.LIST:
            return list(self._unpack_tuple(data))
        if code == Ext.SET:
            return set(self._unpack_tuple(data))
        if code == Ext.DICT:
            flat = self._unpack_tuple(data)
            if len(flat) % 2:
                raise ProtocolError("malformed dict")
            return dict(zip(flat[::2], flat[1::2], strict=True))
        if code == Ext.BYTEARRAY:
            value = self._unpack(data)
            if not isinstance(value, (bytes, bytearray)):
                raise ProtocolError("malformed bytearray")
            return value if type(value) is bytearray else bytearray(value)
        if code == Ext.BUFFER:
            if len(data) != OID.size:
                raise ProtocolError("malformed buffer reference")
            index = OID.unpack(data)[0]
            if index >= len(self.incoming):
                raise ProtocolError(f"reference to missing out-of-band buffer {index}")
            return bytes(self.incoming[index]) if not self._raw_buffers else \
                self.incoming[index]
        if code == Ext.NDARRAY:
            return self._decode_ndarray(data)
        if code == Ext.EXC:
            return self._decode_exception(data)
        raise ProtocolError(f"unknown ext type {code}")

    def _remember_type(self, tid: int, descriptor: Descriptor) -> Descriptor:
        """Keep a peer's type descriptor, within the connection's bounds."""
        types = self._peer_types
        old = types.get(tid)
        if old is None and len(types) >= MAX_PEER_TYPES:
            raise ProtocolError(f"the peer described more than {MAX_PEER_TYPES} types")
        names = self._peer_type_names + len(descriptor[2]) + len(descriptor[3])
        if old is not None:
            names -= len(old[2]) + len(old[3])
        if names > MAX_PEER_TYPE_NAMES:
            raise ProtocolError(f"the peer's type descriptors name more than "
                                f"{MAX_PEER_TYPE_NAMES} methods")
        self._peer_type_names = names
        types[tid] = descriptor
        return descriptor

    def _unpack_tuple(self, data: bytes, length: int | None = None) -> tuple:
        items = self._unpack(data)
        if type(items) is not tuple or (length is not None and len(items) != length):
            raise ProtocolError("malformed container value")
        return items

    def _decode_ndarray(self, data: bytes) -> Any:
        self._raw_buffers = True
        try:
            dtype_str, shape, scalar, raw = self._unpack_tuple(data, length=4)
        finally:
            self._raw_buffers = False
        try:
            return array_from_parts(dtype_str, shape, scalar, raw)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed numpy array: {exc}") from None

    def _decode_exception(self, data: bytes) -> BaseException:
        module, qualname, args, message, text, frames, builtin_base = \
            self._unpack_tuple(data, length=7)
        if not (isinstance(module, str) and isinstance(qualname, str)
                and isinstance(builtin_base, str)):
            raise ProtocolError("malformed exception")
        cls = remote_exception_class(module, qualname, builtin_base, self._exception_classes)
        if type(message) is not str:  # str(exc) must never raise
            message = repr(message)
        if type(text) is not str:
            text = ""
        try:
            exc = cls.__new__(cls)
            exc.args = args if isinstance(args, tuple) else (message,)
        except Exception:
            exc = cls.__new__(cls)
            exc.args = (message,)
        exc._rk_message = message
        exc.remote_type = qualname if module == "builtins" else f"{module}.{qualname}"
        exc.remote_traceback = text
        exc.remote_frames = [RemoteFrame(*frame) for frame in frames]
        exc.peer = self._peer_name()
        return exc

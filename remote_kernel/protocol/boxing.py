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
bytearrays, numpy arrays (masked ones too) and pandas objects are copied; ``values.py`` holds
the codecs of numpy and pandas (raw bytes + dtype + shape, never pickle).

The standard-library values (datetime, Decimal, UUID, paths...: ``stdvalues.py``) go by
value in ``box`` too. A message holding one whose fields are malformed, or that this side
cannot rebuild (an unknown time zone or enum), is still read to its end: its framing is
intact, so only the request it belongs to fails (``decode`` turns a REQUEST into one that
the REFUSED handler answers with the error, and a REPLY into that error); the connection
goes on.
"""

from __future__ import annotations

import itertools
import struct
import threading
import types
from collections.abc import Callable
from typing import Any

from msgpack import ExtType

from remote_kernel.errors import ProtocolError
from remote_kernel.protocol import exceptions, stdvalues, values
from remote_kernel.protocol.codec import ItemBudget, pack, unpack
from remote_kernel.protocol.describe import Descriptor
from remote_kernel.protocol.exceptions import local_class
from remote_kernel.protocol.messages import EXCEPTION, NOTIFY, REPLY, REQUEST, Ext, Kind

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

# Types sent as they are (msgpack's own): no boxing at all.
PASSTHROUGH = frozenset({str, float, bool, type(None)})


def plain(value: Any) -> bool:
    """Whether ``value`` goes as it is, with no boxing (``box(value) is value``): a str,
    float, bool, None, or an int msgpack packs. The one definition; the hot loops (a
    request's arguments, a reply, a tuple's items, a batch) inline it, as a call per value
    costs more than the test, and tests/protocol/test_plain.py pins each copy to it."""
    t = type(value)
    return t in PASSTHROUGH or t is int and INT_MIN <= value <= INT_MAX
_CONTAINERS = frozenset({tuple, list, dict, set, frozenset})
_REF, _PEERREF = int(Ext.REF), int(Ext.PEERREF)
_STD_ENCODERS = stdvalues.ENCODERS
REFUSED = -1  # a request opcode never sent: a request whose values were refused (Refusal)


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


class BatchOutcomes:
    """A BATCH handler's result: each call's (1, value) or (0, exception), boxed in order."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, Any]]) -> None:
        self.items = items


class BatchCalls:
    """The calls of an ``rk.batch``: (target, method name or None, args, kwargs) each,
    boxed in one loop (a batch holds thousands of small calls)."""

    __slots__ = ("calls",)

    def __init__(self, calls: list[tuple[Any, str | None, tuple, Any]]) -> None:
        self.calls = calls


class Refusal:
    """The argument of a REFUSED request: why its values could not be decoded here."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Kwargs(dict):
    """Keyword arguments: sent as a msgpack map (a plain dict would go by reference)."""

    __slots__ = ()


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


def buffers_header(views: list[memoryview], reply_to: int | None = None) -> list:
    """The BUFFERS frame of a message's out-of-band buffers (messages.py): their count,
    which of them are bytes values (for the peer to receive those straight into bytes),
    and for a reply its sequence number (a caller may have memory waiting for it)."""
    kinds = bytes(type(view.obj) is bytes for view in views)
    header = [Kind.BUFFERS, len(views), kinds]
    if reply_to is not None:
        header.append(reply_to)
    return header


def buffers_announced(message: tuple, max_buffers: int) -> tuple[int, bytes]:
    """The count and kinds of a BUFFERS frame; a peer that sends no kinds (an older one)
    sends writable buffers only."""
    count = message[1]
    if type(count) is not int or not 0 < count <= max_buffers:
        raise ProtocolError(f"bad out-of-band buffer count {count!r}")
    if len(message) == 2:
        return count, bytes(count)
    kinds = message[2]
    if len(message) > 4 or type(kinds) is not bytes or len(kinds) != count \
            or kinds.strip(b"\0\1"):
        raise ProtocolError("malformed out-of-band buffer kinds")
    buffers_reply_to(message)  # checked here too
    return count, kinds


def buffers_reply_to(message: tuple) -> int | None:
    """The sequence number of the reply a BUFFERS frame's buffers belong to, if it says."""
    if len(message) < 4:
        return None
    seq = message[3]
    if type(seq) is not int or not 0 < seq <= INT_MAX:
        raise ProtocolError("malformed out-of-band buffer reply number")
    return seq


def _take_buffer(item: Any) -> bytes | bytearray:
    if type(item) not in (bytes, bytearray):
        raise ValueError("expected a buffer")
    return item


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
        self.peer_name = peer_name
        self.include_traceback = include_traceback
        # Exceptions on the wire (protocol/exceptions.py): the local classes made for the
        # peer's exception types (per connection, bounded), the nesting of the one being
        # decoded, and whether a copy may hold references (not inside an exception).
        self.exception_classes: dict[tuple[str, str, str], type[BaseException]] = {}
        self.exception_depth = 0
        self._plain_only = False
        self._type_ids: dict[type, int] = {}
        self._peer_types: dict[int, Descriptor] = {}
        self._peer_type_names = 0
        # What boxing the current message changed, undone if it is not sent.
        self._new_types: list[type] = []
        self._new_refs: list[int] = []
        self.items = 0  # items packed by value into the current message
        self._budget: ItemBudget | None = None  # set while a long payload is decoded
        self.refusal: BaseException | None = None  # a std value of this message refused
        # Out-of-band buffers of the message being encoded / decoded (send / receive lock).
        self.outgoing: list[Any] = []
        # bytes: announced and received as such; None once used (each is used once)
        self.incoming: list[bytes | bytearray | memoryview | None] = []
        self._raw_buffers = False  # True while decoding an array: keep the bytearray
        # The classes of this connection's proxies (made per connection): boxed by oid at once.
        self.own_proxy_types: set[type] = set()
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
        self.exception_classes = {}
        self.own_proxy_types = set()

    def _out_of_band(self, data: Any) -> ExtType:
        self.outgoing.append(data)
        return ExtType(Ext.BUFFER, OID.pack(len(self.outgoing) - 1))

    # -- encoding -------------------------------------------------------------------

    def box(self, obj: Any) -> Any:
        t = type(obj)
        if t in PASSTHROUGH:
            return obj
        if t in self.own_proxy_types:  # a proxy of this connection going home
            return _ext(_PEERREF, OID.pack(obj._rk_oid))
        if t is bytes:
            return obj if len(obj) < OOB_MIN else self._out_of_band(obj)
        if t is int:
            if INT_MIN <= obj <= INT_MAX:
                return obj
            return ExtType(Ext.BIGINT, str(obj).encode())
        if t is tuple:
            self.items += len(obj)
            for item in obj:  # a tuple of plain items goes as it is (packed as an array)
                it = type(item)  # plain(item), inlined
                if it not in PASSTHROUGH and (it is not int or not INT_MIN <= item <= INT_MAX):
                    return [self.box(item) for item in obj]
            return obj
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
        if t is BatchCalls:
            return self._box_calls(obj.calls)
        if t is BatchOutcomes:
            return self._box_outcomes(obj.items)
        std = _STD_ENCODERS.get(t)
        if std is not None:
            try:
                return ExtType(std[0], std[1](obj))
            except stdvalues.CannotEncode:
                pass  # not faithfully by value (a pytz zone...): by reference
        oid = self._proxy_oid(obj)
        if oid is not None:
            return _ext(_PEERREF, OID.pack(oid))
        return self._box_ref(obj)

    def _box_calls(self, calls: list[tuple[Any, str | None, tuple, Any]]) -> list:
        """[targets, calls]: each distinct target once, then each call as [target index,
        name, [args], kwargs] (plain arguments need no boxing)."""
        box = self.box
        index_of: dict[int, int] = {}
        targets: list[Any] = []
        boxed = []
        for target, name, args, kwargs in calls:
            key = id(target)
            index = index_of.get(key)
            if index is None:
                index = index_of[key] = len(targets)
                targets.append(box(target))
            self.items += len(args) + 4
            for arg in args:  # plain arguments go as they are (msgpack packs the tuple)
                t = type(arg)  # plain(arg), inlined
                if t not in PASSTHROUGH and (t is not int or not INT_MIN <= arg <= INT_MAX):
                    args = [box(item) for item in args]
                    break
            boxed.append([index, name, args, None if kwargs is None else box(kwargs)])
        return [targets, boxed]

    def _box_outcomes(self, items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        """(1, value) or (0, exception) per call, boxed in place; plain values as they are."""
        box = self.box
        for i, (ok, value) in enumerate(items):
            t = type(value)  # plain(value), inlined
            if ok and (t in PASSTHROUGH or t is int and INT_MIN <= value <= INT_MAX):
                continue
            items[i] = (1, box(value)) if ok else (0, self.box_exception(value))
        return items

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
        if t in PASSTHROUGH or t is bytes or t is int or t is complex or t is slice \
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
            if len(obj) >= OOB_MIN:  # out of band as it is: no copy here, none there
                return ExtType(Ext.BYTEARRAY, pack(self._out_of_band(memoryview(obj))))
            return ExtType(Ext.BYTEARRAY, pack(bytes(obj)))
        if t is memoryview:
            if obj.nbytes >= OOB_MIN and obj.c_contiguous:
                # Out of band as it is (no copy); it arrives as bytes all the same.
                return self._out_of_band(obj.cast("B"))
            return self.box(obj.tobytes())
        std = _STD_ENCODERS.get(t)
        if std is not None:
            try:
                return ExtType(std[0], std[1](obj))
            except stdvalues.CannotEncode as exc:
                raise TypeError(f"cannot copy a {t.__module__}.{t.__qualname__} object by "
                                f"value: {exc}") from None
        if values.is_codec_value(obj):
            code, fields = values.encode(obj, self._put_buffer)
            return ExtType(code, pack(fields))
        if self._proxy_oid(obj) is not None and not self._plain_only:
            return self.box(obj)
        if stdvalues.is_enum_member(obj):
            try:
                return ExtType(Ext.ENUM, stdvalues.encode_enum(obj))
            except stdvalues.CannotEncode as exc:
                raise TypeError(f"cannot copy {obj!r} by value: {exc}") from None
        raise TypeError(f"cannot copy a {t.__module__}.{t.__qualname__} object by value")

    def box_plain_value(self, obj: Any) -> Any:
        """``box_value`` that refuses references too (a proxy is a TypeError)."""
        self._plain_only = True
        try:
            return self.box_value(obj)
        finally:
            self._plain_only = False

    def _put_buffer(self, view: memoryview) -> Any:
        """Where a value's raw buffer goes: inline, or out of band when large."""
        return self._out_of_band(view) if view.nbytes >= OOB_MIN else view

    def box_exception(self, exc: BaseException) -> ExtType:
        """The EXC value of ``exc``: class, args, frames, attributes, notes, chain."""
        return exceptions.encode(self, exc)

    # -- decoding -------------------------------------------------------------------

    def decode(self, payload: bytes | bytearray | memoryview) -> Any:
        """One message. A payload of n bytes holds at most n items, so only one longer
        than MAX_ITEMS bytes has its items counted as they are decoded."""
        try:
            if len(payload) <= MAX_ITEMS:
                message = unpack(payload, self.ext_hook)
            else:
                self._budget = ItemBudget(MAX_ITEMS)
                try:
                    message = unpack(payload, self.ext_hook, self._budget)
                finally:
                    self._budget = None
        except BaseException:
            self.refusal = None
            raise
        if self.refusal is not None:
            return self._refused(message)
        return message

    def _refused(self, message: Any) -> tuple:
        """A message that held a refused value (see the theory of operation): a request
        becomes one that fails with the error, a reply (or an exception) that error."""
        error, self.refusal = self.refusal, None
        if type(message) is tuple and len(message) >= 3 and type(message[1]) is int:
            kind = message[0]
            if kind == REQUEST:
                return (REQUEST, message[1], REFUSED, Refusal(error))
            if kind == REPLY or kind == EXCEPTION:
                return (EXCEPTION, message[1], error)
        if type(message) is tuple and message and message[0] == NOTIFY:
            raise ProtocolError(f"a notification carried a refused value: {error}")
        raise error if isinstance(error, ProtocolError) else ProtocolError(str(error))

    def _unpack(self, data: bytes) -> Any:
        """A value nested in an ext value: inside the budget of its message."""
        return unpack(data, self.ext_hook, self._budget)

    def ext_hook(self, code: int, data: bytes) -> Any:
        """Decode one ext value; anything malformed (or nested too deeply) is a
        ProtocolError, whatever the lower layer raised."""
        if code == _PEERREF and len(data) == 8 and not self.exception_depth:
            # Our own object coming home: the most common ext value, nothing nested.
            return self.table.get(OID.unpack(data)[0])
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
        # References first, and compared as plain ints: they are most of what arrives.
        if code == _PEERREF:
            if self.exception_depth:
                raise ProtocolError("an exception may not carry references")
            if len(data) != OID.size:
                raise ProtocolError("malformed object id")
            return self.table.get(OID.unpack(data)[0])
        if code == _REF:
            if self.exception_depth:
                raise ProtocolError("an exception may not carry references")
            if len(data) != REF.size:
                raise ProtocolError("malformed reference")
            oid, tid = REF.unpack(data)
            descriptor = self._peer_types.get(tid)
            if descriptor is None:
                raise ProtocolError(f"reference to unknown type id {tid}")
            return self._make_proxy(oid, descriptor)
        if code == Ext.REFDESC:
            if self.exception_depth:
                raise ProtocolError("an exception may not carry references")
            oid, tid, descriptor = self._unpack_tuple(data, length=3)
            if type(oid) is not int or type(tid) is not int or oid < 0 or tid < 0 \
                    or oid > INT_MAX or tid > 0xFFFFFFFF:
                raise ProtocolError("malformed reference")
            descriptor = self._remember_type(tid, _checked_descriptor(descriptor))
            return self._make_proxy(oid, descriptor)
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
            # A buffer received as a writable bytearray (out of band) is the value itself.
            raw, self._raw_buffers = self._raw_buffers, True
            try:
                value = self._unpack(data)
            finally:
                self._raw_buffers = raw
            if not isinstance(value, (bytes, bytearray)):
                raise ProtocolError("malformed bytearray")
            return value if type(value) is bytearray else bytearray(value)
        if code == Ext.BUFFER:
            if len(data) != OID.size:
                raise ProtocolError("malformed buffer reference")
            index = OID.unpack(data)[0]
            if index >= len(self.incoming):
                raise ProtocolError(f"reference to missing out-of-band buffer {index}")
            # An array copies a read-only buffer (ndarrays.array_from); bytes(...) does not
            # copy one that arrived as bytes. A memoryview is a caller's memory the buffer
            # landed in (``Connection.sync_request(..., into=)``): the caller takes it as
            # it is.
            buffer = self.incoming[index]
            if buffer is None:
                raise ProtocolError(f"out-of-band buffer {index} is used twice")
            # Each buffer stands for one value: a second use would copy it again, and a
            # small message could multiply one large buffer many times over.
            self.incoming[index] = None
            if self._raw_buffers or type(buffer) is memoryview:
                return buffer
            return bytes(buffer)
        if code in stdvalues.CODES:
            return self._decode_std(code, data)
        if code in values.CODES:
            return self._decode_value(code, data)
        if code == Ext.EXC:
            return exceptions.decode(self, data)
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

    unpack_tuple = _unpack_tuple

    def _decode_std(self, code: int, data: bytes) -> Any:
        """A standard-library value (stdvalues.py). One that is malformed or that this side
        cannot rebuild is refused: None stands for it, and the message fails as a whole
        (``decode``), not the connection."""
        try:
            return stdvalues.decode(code, data)
        except stdvalues.NotHere as exc:
            error: BaseException = TypeError(str(exc))
        except Exception as exc:  # ValueError, OverflowError, msgpack's own errors...
            error = ProtocolError(f"malformed {Ext(code).name.lower()} value from "
                                  f"{self.peer_name()}: {type(exc).__name__}: {exc}")
        if self.refusal is None:
            self.refusal = error
        return None

    def _decode_value(self, code: int, data: bytes) -> Any:
        """A numpy/pandas value (values.py); one this side cannot rebuild (a library is
        missing) becomes an ``Unavailable`` marker, so the message is still read and the
        request that carried it fails with a ``TypeError`` instead of the connection."""
        self._raw_buffers = True
        try:
            fields = self._unpack_tuple(data)
        finally:
            self._raw_buffers = False
        try:
            return values.decode(code, fields, _take_buffer)
        except values.MissingLibrary as exc:
            return values.Unavailable(str(exc))
        except Exception as exc:  # ValueError, TypeError, numpy's and pandas' own errors
            raise ProtocolError(f"malformed {Ext(code).name.lower()} value: "
                                f"{type(exc).__name__}: {exc}") from None


def remote_exception_class(module: str, qualname: str,
                           builtin_base: str = "") -> type[BaseException]:
    """The local class standing for a remote exception type (see protocol/exceptions.py)."""
    return local_class(module, qualname, builtin_base)

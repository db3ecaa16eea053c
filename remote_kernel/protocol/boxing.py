"""Values by value, everything else by reference.

Theory of operation
-------------------
``Boxer.box`` turns a Python value into msgpack-ready data. The by-value types of the
design (None, bool, int of any size, float, complex, str, bytes, tuple, frozenset, slice,
Ellipsis) are encoded with their type: msgpack arrays *are* tuples (they decode as tuples),
and the rest use the ext types of ``messages.Ext``. Every other object is put in the local
:class:`~remote_kernel.protocol.objects.ObjectTable` and sent as a REF: its object id and
its type id. The first time a type crosses the connection its descriptor travels with the
REF; later REFs carry 12 bytes. A proxy of the peer's object going back is a PEERREF and
decodes to the original object. Decoding is the Boxer's other half, ``unboxing.Unboxer``.

Boxing happens under the connection's send lock and unboxing under its receive lock, so type
descriptors are always seen before the REFs that use them. Sending is all or nothing: what
boxing one message changed (types marked as described, object-table entries) is recorded and
undone by ``rollback()`` when that message is not sent.

``box_value`` is the deep by-value encoding of ``obtain``/``deliver``: lists, dicts, sets,
bytearrays, numpy arrays (masked ones too) and pandas objects are copied; ``values.py`` holds
the codecs of numpy and pandas (raw bytes + dtype + shape, never pickle).

The standard-library values (datetime, Decimal, UUID, paths...: ``stdvalues.py``) go by
value in ``box`` too; one that cannot go faithfully by value (a pytz zone) goes by reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgpack import ExtType

from remote_kernel.protocol import exceptions, stdvalues, values
from remote_kernel.protocol.codec import pack
from remote_kernel.protocol.describe import Descriptor
from remote_kernel.protocol.exceptions import local_class
from remote_kernel.protocol.messages import COMPLEX, INT_MAX, INT_MIN, OID, REF, Ext
from remote_kernel.protocol.objects import ObjectTable
from remote_kernel.protocol.unboxing import MAX_ITEMS, Unboxer

MAX_DEPTH = 64
MAX_VALUE_ITEMS = MAX_ITEMS // 2  # items a sender packs by value in one message
OOB_MIN = 64 * 1024  # bytes payloads at least this large travel out of band

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


def _ext(code: int, data: bytes) -> ExtType:
    """ExtType without its Python-level argument checks, for the hot reference path."""
    return tuple.__new__(ExtType, (code, data))


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


class Kwargs(dict):
    """Keyword arguments: sent as a msgpack map (a plain dict would go by reference)."""

    __slots__ = ()


class Boxer(Unboxer):
    """Encodes values for one connection and decodes what the peer sends (Unboxer).

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
        super().__init__(table, make_proxy, peer_name)
        self._describe = describe
        self._proxy_oid = proxy_oid
        self.include_traceback = include_traceback
        self.include_variables = False  # the peer renders %xmode Verbose (Op.VARIABLES)
        self._plain_only = False  # in an exception's copy: no references
        self._type_ids: dict[type, int] = {}
        # What boxing the current message changed, undone if it is not sent.
        self._new_types: list[type] = []
        self._new_refs: list[int] = []
        self.items = 0  # items packed by value into the current message
        # Out-of-band buffers of the message being encoded (send lock).
        self.outgoing: list[Any] = []
        # The classes of this connection's proxies (made per connection): boxed by oid at once.
        self.own_proxy_types: set[type] = set()

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
        super().forget()
        self._type_ids = {}
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


def remote_exception_class(module: str, qualname: str,
                           builtin_base: str = "") -> type[BaseException]:
    """The local class standing for a remote exception type (see protocol/exceptions.py)."""
    return local_class(module, qualname, builtin_base)

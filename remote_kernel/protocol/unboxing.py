"""The decoding half of a connection's Boxer: what the peer sends, back into values.

Unboxing happens under the connection's receive lock, one message at a time. References
decode to proxies (``make_proxy``) or, coming home, to the local object; a type's descriptor
arrives with the first REF of that type and is kept (bounded) for the later ones.

Decoding is bounded by what arrived. A message of n bytes (its payload and out-of-band
buffers) may decode to at most ``DECODE_FACTOR`` * n + ``DECODE_SLACK`` bytes of values and
``MAX_ITEMS`` items: every array, map and ext value is charged what it costs in memory
(measured; tests/hardening/test_amplification.py) as it is built, nested ones included,
and checked at once against the bytes it came from (``codec.DecodeBudget``): a message of
values costlier than the factor is a ProtocolError after its first few, before it costs
memory or time. Scalars (str, int, float, bytes) are not charged one by one: each costs at
most ~17 times its bytes on the wire besides the pointer its container is charged. The
copies msgpack makes of nested ext values' bytes are bounded apart (``MAX_COPIES``). A
payload of at most ``SMALL_PAYLOAD`` bytes cannot decode to more than the slack (the worst
measured is well under it), so it is decoded without counting: the hot path of small calls
pays nothing. The peer's type descriptors are capped per connection, and so is the cache
of exception classes.

A message holding a standard-library value (``stdvalues.py``) whose fields are malformed,
or that this side cannot rebuild (an unknown time zone or enum), is still read to its end:
its framing is intact, so only the request it belongs to fails (``decode`` turns a REQUEST
into one that the REFUSED handler answers with the error, and a REPLY into that error); the
connection goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from sys import getsizeof
from typing import Any

from remote_kernel.errors import ProtocolError
from remote_kernel.protocol import exceptions, stdvalues, values
from remote_kernel.protocol.codec import TUPLE_SIZE, DecodeBudget, unpack
from remote_kernel.protocol.describe import Descriptor
from remote_kernel.protocol.messages import (
    COMPLEX,
    EXCEPTION,
    INT_MAX,
    NOTIFY,
    OID,
    REF,
    REPLY,
    REQUEST,
    Ext,
)
from remote_kernel.protocol.objects import ObjectTable

MAX_DECODE_DEPTH = 32  # nested ext values (each is a C-level unpack: the C stack is finite)
MAX_ITEMS = 1 << 22  # items one decoded message may hold (4,194,304)
# Bytes of values a message of n bytes may decode to: DECODE_FACTOR * n + DECODE_SLACK.
# The factor is the most legitimate by-value payloads need (nested tuples of small ints
# ~x38 at the peak, a set of ints ~x24, a list of ints ~x18, numpy/pandas x1-x10; see
# SECURITY.md); the slack lets a small message hold a few costly values.
DECODE_FACTOR = 40
DECODE_SLACK = 4 << 20
SMALL_PAYLOAD = 16 * 1024  # decoded without counting: it cannot exceed the slack
MAX_PEER_TYPES = 16_384  # type descriptors a peer may send over one connection
MAX_PEER_TYPE_NAMES = 1_000_000  # method and dunder names in all of them together
REFUSED = -1  # a request opcode never sent: a request whose values were refused (Refusal)
_REF, _PEERREF = int(Ext.REF), int(Ext.PEERREF)


class Refusal:
    """The argument of a REFUSED request: why its values could not be decoded here."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


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


def _take_buffer(item: Any) -> bytes | bytearray:
    if type(item) not in (bytes, bytearray):
        raise ValueError("expected a buffer")
    return item


class Unboxer:
    """Decodes what the peer sends over one connection (``Boxer`` adds the encoding).

    ``make_proxy(oid, descriptor)`` returns the proxy of a peer object; ``peer_name()``
    names the peer in errors.
    """

    def __init__(
        self,
        table: ObjectTable,
        make_proxy: Callable[[int, Descriptor], Any],
        peer_name: Callable[[], str],
    ) -> None:
        self.table = table
        self._make_proxy = make_proxy
        self.peer_name = peer_name
        # Exceptions on the wire (protocol/exceptions.py): the local classes made for the
        # peer's exception types (per connection, bounded), the nesting of the one being
        # decoded and how many it holds (its chain and sub-exceptions).
        self.exception_classes: dict[tuple[str, str, str, bool], type[BaseException]] = {}
        self.exception_depth = 0
        self.exception_count = 0
        self._peer_types: dict[int, Descriptor] = {}
        self._peer_type_names = 0
        self._budget: DecodeBudget | None = None  # set while a long payload is decoded
        self.refusal: BaseException | None = None  # a std value of this message refused
        # Out-of-band buffers of the message being decoded (receive lock).
        # bytes: announced and received as such; None once used (each is used once)
        self.incoming: list[bytes | bytearray | memoryview | None] = []
        self._raw_buffers = False  # True while decoding an array: keep the bytearray
        self._depth = 0

    def forget(self) -> None:
        """The connection closed: drop everything kept about the peer's types."""
        self._peer_types = {}
        self._peer_type_names = 0
        self.exception_classes = {}

    def decode(self, payload: bytes | bytearray | memoryview) -> Any:
        """One message, within its budget (see the theory of operation): only a payload
        longer than SMALL_PAYLOAD has its values charged as they are decoded."""
        try:
            if len(payload) <= SMALL_PAYLOAD:
                message = unpack(payload, self.ext_hook)
            else:
                size = len(payload) + sum(len(b) for b in self.incoming if b is not None)
                self._budget = DecodeBudget(size, DECODE_FACTOR, DECODE_SLACK, MAX_ITEMS)
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
        budget = self._budget
        if budget is None:
            return unpack(data, self.ext_hook)
        seen = budget.seen
        value = unpack(data, self.ext_hook, budget)
        budget.seen = seen + _ext_seen(len(data))  # all of it now (its items saw less)
        return value

    def ext_hook(self, code: int, data: bytes) -> Any:
        """Decode one ext value; anything malformed (or nested too deeply, or over the
        message's budget) is a ProtocolError, whatever the lower layer raised."""
        if code == _PEERREF and len(data) == 8 and not self.exception_depth:
            # Our own object coming home: the most common ext value, nothing nested.
            return self.table.get(OID.unpack(data)[0])
        if self._depth >= MAX_DECODE_DEPTH:
            raise ProtocolError("values nested too deeply")
        decoder = _DECODERS.get(code)
        if decoder is None:
            raise ProtocolError(f"unknown ext type {code}")
        budget = self._budget
        if budget is not None:
            size = len(data)
            self._charge_ext(budget, code, size)
        self._depth += 1
        try:
            return decoder(self, data)
        except ProtocolError:
            raise
        except Exception as exc:  # struct.error, numpy's dtype parser, RecursionError...
            raise ProtocolError(f"malformed ext value {code}: {type(exc).__name__}: {exc}") \
                from None
        finally:
            self._depth -= 1
            if budget is not None:
                budget.copies -= size

    @staticmethod
    def _charge_ext(budget: DecodeBudget, code: int, size: int) -> None:
        """Charge an ext value, before it is built: what it becomes (``_COSTS``; what it
        holds is charged as it is decoded), and the copy of its bytes msgpack made for it
        (live until it is built). A leaf's bytes are seen now; the others' once decoded."""
        budget.copies += size
        if code in _LEAVES:
            budget.charge(_COSTS.get(code, EXT_COST), _ext_seen(size))
        else:
            budget.charge(_COSTS.get(code, EXT_COST), 0)

    # -- one decoder per ext type (``_DECODERS``, below) ------------------------------------

    def _peerref(self, data: bytes) -> Any:
        if self.exception_depth:
            raise ProtocolError("an exception may not carry references")
        if len(data) != OID.size:
            raise ProtocolError("malformed object id")
        return self.table.get(OID.unpack(data)[0])

    def _ref(self, data: bytes) -> Any:
        if self.exception_depth:
            raise ProtocolError("an exception may not carry references")
        if len(data) != REF.size:
            raise ProtocolError("malformed reference")
        oid, tid = REF.unpack(data)
        descriptor = self._peer_types.get(tid)
        if descriptor is None:
            raise ProtocolError(f"reference to unknown type id {tid}")
        return self._make_proxy(oid, descriptor)

    def _refdesc(self, data: bytes) -> Any:
        if self.exception_depth:
            raise ProtocolError("an exception may not carry references")
        oid, tid, descriptor = self._unpack_tuple(data, length=3)
        if type(oid) is not int or type(tid) is not int or oid < 0 or tid < 0 \
                or oid > INT_MAX or tid > 0xFFFFFFFF:
            raise ProtocolError("malformed reference")
        descriptor = self._remember_type(tid, _checked_descriptor(descriptor))
        return self._make_proxy(oid, descriptor)

    def _bigint(self, data: bytes) -> int:
        try:
            return int(data.decode("ascii"))
        except ValueError:
            raise ProtocolError("malformed big integer") from None

    def _complex(self, data: bytes) -> complex:
        real, imag = COMPLEX.unpack(data)
        return complex(real, imag)

    def _slice(self, data: bytes) -> slice:
        start, stop, step = self._unpack_tuple(data, length=3)
        return slice(start, stop, step)

    def _list(self, data: bytes) -> list:
        items = self._unpack_tuple(data)
        self._built(_LIST_SIZE + 8 * len(items), items)
        return list(items)

    def _set(self, data: bytes) -> set:
        items = self._unpack_tuple(data)
        self._built(_SET_SIZE + _SET_ITEM * len(items), items)
        return set(items)

    def _frozenset(self, data: bytes) -> frozenset:
        items = self._unpack_tuple(data)
        self._built(_SET_SIZE + _SET_ITEM * len(items), items)
        return frozenset(items)

    def _dict(self, data: bytes) -> dict:
        flat = self._unpack_tuple(data)
        if len(flat) % 2:
            raise ProtocolError("malformed dict")
        self._built(_DICT_SIZE + _DICT_ITEM * (len(flat) // 2), flat)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def _built(self, cost: int, items: tuple) -> None:
        """A container of ``items`` is about to be built: charge it (its bytes were seen
        as its items were decoded); the tuple of its items is freed once it is."""
        budget = self._budget
        if budget is not None:
            budget.charge(cost, 0)
            budget.used -= TUPLE_SIZE + 8 * len(items) if items else 0

    def _bytearray(self, data: bytes) -> bytearray:
        # A buffer received as a writable bytearray (out of band) is the value itself.
        raw, self._raw_buffers = self._raw_buffers, True
        try:
            value = self._unpack(data)
        finally:
            self._raw_buffers = raw
        if not isinstance(value, (bytes, bytearray)):
            raise ProtocolError("malformed bytearray")
        return value if type(value) is bytearray else bytearray(value)

    def _buffer(self, data: bytes) -> Any:
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

    def _exception(self, data: bytes) -> BaseException:
        return exceptions.decode(self, data)

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

    def _decode_std(self, data: bytes, code: int) -> Any:
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

    def _decode_value(self, data: bytes, code: int) -> Any:
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



def _with_code(method: Callable[[Unboxer, bytes, int], Any], code: int) \
        -> Callable[[Unboxer, bytes], Any]:
    return lambda unboxer, data: method(unboxer, data, code)


# The decoder of each ext type, by plain int (an IntEnum member is a slow lookup).
_DECODERS: dict[int, Callable[[Unboxer, bytes], Any]] = {
    int(Ext.PEERREF): Unboxer._peerref,
    int(Ext.REF): Unboxer._ref,
    int(Ext.REFDESC): Unboxer._refdesc,
    int(Ext.BIGINT): Unboxer._bigint,
    int(Ext.COMPLEX): Unboxer._complex,
    int(Ext.FROZENSET): Unboxer._frozenset,
    int(Ext.SLICE): Unboxer._slice,
    int(Ext.ELLIPSIS): lambda unboxer, data: Ellipsis,
    int(Ext.NOTIMPLEMENTED): lambda unboxer, data: NotImplemented,
    int(Ext.LIST): Unboxer._list,
    int(Ext.SET): Unboxer._set,
    int(Ext.DICT): Unboxer._dict,
    int(Ext.BYTEARRAY): Unboxer._bytearray,
    int(Ext.BUFFER): Unboxer._buffer,
    int(Ext.EXC): Unboxer._exception,
    **{code: _with_code(Unboxer._decode_std, code) for code in stdvalues.CODES},
    **{code: _with_code(Unboxer._decode_value, code) for code in values.CODES},
}

# What an ext value becomes costs, besides what it holds (charged as it is decoded) and the
# copy of its bytes (charged while it lives); measured with tracemalloc, see
# tests/hardening/test_amplification.py. The default stands for a small object and the
# Python-level work of decoding it; containers charge their own size (``_built``).
EXT_COST = 64
_COSTS: dict[int, int] = {
    int(Ext.LIST): 0,
    int(Ext.SET): 0,
    int(Ext.FROZENSET): 0,
    int(Ext.DICT): 0,
    int(Ext.BYTEARRAY): 0,
    int(Ext.REF): 256,  # a proxy (~210 bytes)
    int(Ext.REFDESC): 256,  # a proxy (its class is bounded per connection)
    int(Ext.EXC): 512,  # an exception and its attributes (~400 bytes)
    int(Ext.NDARRAY): 512,  # an array's header (~600 bytes with its fields)
    int(Ext.MASKED): 1536,  # two arrays (~1,800)
    int(Ext.PANDAS): 1024,  # a Series, DataFrame or Index (1-4 KiB with its arrays)
    **{code: 128 for code in stdvalues.CODES},  # a datetime, UUID... (~110-130 bytes)
}
# Ext values whose bytes are not decoded again here (the others' are, and seen then).
_LEAVES = frozenset({int(Ext.PEERREF), int(Ext.REF), int(Ext.BIGINT), int(Ext.COMPLEX),
                     int(Ext.ELLIPSIS), int(Ext.NOTIMPLEMENTED), int(Ext.BUFFER),
                     *stdvalues.CODES})
# Containers by value, charged before they are built (sys.getsizeof, measured).
_LIST_SIZE = getsizeof([])
_SET_SIZE, _SET_ITEM = getsizeof(set()), 64
_DICT_SIZE, _DICT_ITEM = getsizeof({}), 64


def _ext_seen(size: int) -> int:
    """The bytes an ext value of ``size`` bytes took in its message, less the one its
    container counts for it."""
    if size in (1, 2, 4, 8, 16):
        return 1 + size  # fixext: marker, type, data
    return (2 if size < 256 else 3 if size < 65536 else 5) + size

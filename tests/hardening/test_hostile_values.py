"""numpy and pandas values from a hostile peer: every malformed field is a ProtocolError
(never another exception, never code run, never memory beyond what arrived), a value this
side cannot rebuild fails its request and not the connection, and ``numpy.asarray`` of a
netref asks for data only."""

from __future__ import annotations

import datetime
import socket
import threading
from typing import Any

import msgpack
import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import LOCAL_DENIED
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol import dataframes, unboxing, values
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.codec import pack
from remote_kernel.protocol.messages import Ext, Kind, Op
from remote_kernel.protocol.objects import ObjectTable
from tests.hardening.rawpeer import RawPeer, packb, ref
from tests.hardening.test_hostile_peer import _netref_from

numpy = pytest.importorskip("numpy")


def _boxer() -> Boxer:
    return Boxer(ObjectTable(), describe=lambda cls: ("m", cls.__name__, (), (), 0, ""),
                 make_proxy=lambda oid, descriptor: ("proxy", oid), proxy_oid=lambda o: None,
                 peer_name=lambda: "hostile")


def _decode(code: int, fields: Any) -> Any:
    return _boxer().decode(packb(ExtType(code, packb(fields))))


def _array(dtype: Any, shape: list, raw: bytes, scalar: bool = False, order: str = "C") -> list:
    return [dtype, shape, scalar, raw, order]


BAD_ARRAYS = {
    "object kind": _array("|O8", [1], b"\0" * 8),
    "bare object": _array("O", [1], b"\0" * 8),
    "comma list": _array("<i4,<i4", [1], b"\0" * 8),
    "subarray string": _array("(2,)<i4", [1], b"\0" * 8),
    "zero itemsize": _array("|V0", [1], b""),
    "zero-width string": _array("<U0", [0], b""),
    "trailing space": _array("<f8 ", [1], b"\0" * 8),
    "bad datetime unit": _array("<M8[ly]", [1], b"\0" * 8),
    "bytes do not fit": _array("<f8", [3], b"\0" * 8),
    "huge shape, no bytes": _array("<f8", [10**12], b""),
    "negative size": _array("<f8", [-1], b""),
    "too many dimensions": _array("<f8", [1] * 40, b"\0" * 8),
    "a scalar with a shape": _array("<f8", [1], b"\0" * 8, scalar=True),
    "unknown order": _array("<f8", [1], b"\0" * 8, order="X"),
    "dtype of the wrong type": _array(8, [1], b"\0" * 8),
    "struct with an object field": _array(
        ["struct", 8, False, False, [["a", None, "|O8", 0]]], [1], b"\0" * 8),
    "field outside the item": _array(
        ["struct", 4, False, False, [["a", None, "<f8", 0]]], [1], b"\0" * 4),
    "duplicate names": _array(
        ["struct", 8, False, False, [["a", None, "<i4", 0], ["a", None, "<i4", 4]]],
        [1], b"\0" * 8),
    "huge itemsize": _array(["struct", 2**40, False, False, [["a", None, "<i4", 0]]], [0],
                            b""),
    "huge subarray": _array(
        ["struct", 8, False, False, [["a", None, ["sub", "<i1", [2**20, 2**20]], 0]]],
        [0], b""),
    "nested too deeply": _array(
        ["struct", 1, False, False, [["a", None, ["struct", 1, False, False, [["b", None, [
            "struct", 1, False, False, [["c", None, ["struct", 1, False, False, [
                ["d", None, ["struct", 1, False, False, [["e", None, ["struct", 1, False,
                 False, [["f", None, ["struct", 1, False, False, [["g", None, [
                     "struct", 1, False, False, [["h", None, ["struct", 1, False, False, [
                         ["i", None, "|u1", 0]]], 0]]], 0]]], 0]]], 0]]], 0]]], 0]]], 0]]],
         0]]], [1], b"\0"),
    "a body that is not bytes": ["<f8", [1], False, [1, 2], "C"],
    "too few fields": ["<f8", [1]],
}


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_malformed_arrays_are_protocol_errors(name: str) -> None:
    with pytest.raises(rk.ProtocolError):
        _decode(Ext.NDARRAY, BAD_ARRAYS[name])


GOOD = _array("<i4", [2], b"\1\0\0\0\2\0\0\0")
BAD_MASKED = {
    "mask of another shape": [GOOD, _array("|b1", [3], b"\0\0\0"), _array("<i4", [], b"\0" * 4,
                                                                          scalar=True), False],
    "mask of another dtype": [GOOD, _array("<i4", [2], b"\0" * 8),
                              _array("<i4", [], b"\0" * 4, scalar=True), False],
    "hard mask not a bool": [GOOD, None, _array("<i4", [], b"\0" * 4, scalar=True), 1],
    "data is a scalar": [_array("<i4", [], b"\0" * 4, scalar=True), None,
                         _array("<i4", [], b"\0" * 4, scalar=True), False],
}


@pytest.mark.parametrize("name", sorted(BAD_MASKED))
def test_malformed_masked_arrays_are_protocol_errors(name: str) -> None:
    with pytest.raises(rk.ProtocolError):
        _decode(Ext.MASKED, BAD_MASKED[name])


def _strings(utf8: bytes, offsets: list[int], missing: list[int]) -> list:
    return ["strings", "object", _array("|u1", [len(utf8)], utf8),
            _array("<i8", [len(offsets)], numpy.array(offsets, "<i8").tobytes()),
            _array("|u1", [len(missing)], bytes(missing))]


def _series(values: list, length: int = 2) -> list:
    return ["series", values, ["range", 0, length, 1, None], None]


BAD_PANDAS = {
    "offsets past the data": _series(_strings(b"ab", [0, 1, 5], [0, 0])),
    "offsets going back": _series(_strings(b"ab", [0, 2, 1], [0, 0])),
    "offsets not from zero": _series(_strings(b"ab", [1, 1, 2], [0, 0])),
    "unknown missing code": _series(_strings(b"ab", [0, 1, 2], [0, 9])),
    "a missing item with bytes": _series(_strings(b"ab", [0, 1, 2], [0, 1])),
    "not utf-8": _series(_strings(b"\xff\xfe", [0, 1, 2], [0, 0])),
    "column longer than the index": _series(["numpy", _array("<i4", [2], b"\0" * 8)], 3),
    "a 2-d column": _series(["numpy", _array("<i4", [1, 2], b"\0" * 8)], 1),
    "range step zero": ["range", 0, 5, 0, None],
    "a name that is a list ext": ["range", 0, 5, 1, ExtType(Ext.LIST, packb([1]))],
    "unknown kind": ["pickle", b"cos\nsystem\n"],
    "frequency garbage": ["index", ["numpy", _array("<M8[ns]", [1], b"\0" * 8)], None,
                          "D; rm -rf /"],
    "time zone path": _series(["datetimetz", _array("<M8[ns]", [2], b"\0" * 16),
                               ["zoneinfo", "../../etc/passwd"]]),
    "time zone offset of days": _series(["datetimetz", _array("<M8[ns]", [2], b"\0" * 16),
                                         ["offset", 10**9]]),
    "category codes out of range": _series(["category", _array("|i1", [2], b"\0\7"),
                                            ["index", ["numpy", _array("<i8", [1], b"\0" * 8)],
                                             None, None], False]),
    "unknown nullable dtype": _series(["masked", "object", _array("<i8", [2], b"\0" * 16),
                                       _array("|b1", [2], b"\0\0")]),
    "multi-index of unequal parts": ["multi", [["range", 0, 2, 1, None]], [], ["a"]],
    "frame with columns but no labels": ["frame", [["numpy", _array("<i4", [2], b"\0" * 8)]],
                                         ["range", 0, 0, 1, None], ["range", 0, 2, 1, None]],
    "string storage unknown": _series(["strings", ["string", "evil", "NA"],
                                       _array("|u1", [0], b""), _array("<i8", [3], b"\0" * 24),
                                       _array("|u1", [2], b"\1\1")]),
}


@pytest.mark.parametrize("name", sorted(BAD_PANDAS))
def test_malformed_pandas_values_are_protocol_errors(name: str) -> None:
    pytest.importorskip("pandas")
    with pytest.raises(rk.ProtocolError):
        _decode(Ext.PANDAS, BAD_PANDAS[name])


def test_a_value_this_side_cannot_rebuild_fails_the_request_only(monkeypatch) -> None:
    def no_pandas() -> Any:
        raise values.MissingLibrary("install pandas here (pip install pandas)")

    monkeypatch.setattr(dataframes, "_pandas", no_pandas)
    value = _decode(Ext.PANDAS, _series(["numpy", _array("<i4", [2], b"\0" * 8)]))
    assert type(value) is values.Unavailable
    with pytest.raises(TypeError, match="install pandas"):
        values.check_available([1, {"frame": value}])


def test_decoding_is_bounded_by_what_arrived() -> None:
    """A shape announcing more items than bytes arrived is refused before any allocation;
    a well-formed array is exactly as large as its bytes."""
    with pytest.raises(rk.ProtocolError):
        _decode(Ext.NDARRAY, _array("<f8", [2**40], b"\0" * 8))
    array = _decode(Ext.NDARRAY, _array("<f8", [1], b"\0" * 8))
    assert array.nbytes == 8 and array.flags.writeable


def test_snapshot_reads_stay_inside_the_buffers() -> None:
    snapshot = values.Snapshot([memoryview(b"abc"), memoryview(b""), memoryview(b"defg")])
    assert snapshot.read(0, 100) == b"abcdefg"
    assert snapshot.read(2, 3) == b"cde"
    assert snapshot.read(7, 10) == b"" and snapshot.read(100, 10) == b""
    for offset, length in ((-1, 2), (0, -2), ("0", 1), (0, 1.5)):
        with pytest.raises(ValueError):
            snapshot.read(offset, length)


# -- numpy.asarray of a netref, against a peer spoken to by hand --------------------------



NDARRAY_TYPE = ["numpy", "ndarray", [], ["__len__", "__getitem__", "__add__"], 0, ""]


def _answer_obtains(raw: RawPeer, replies: list[Any], stop: threading.Event) -> threading.Thread:
    """Answer each OBTAIN with the next reply; answer a READ with what the reply says."""
    def run() -> None:
        pending = list(replies)
        while not stop.is_set():
            try:
                message = raw.recv_kind((Kind.REQUEST,), timeout=0.2)
            except (TimeoutError, OSError, EOFError):
                continue
            if pending:
                raw.send([Kind.REPLY, message[1], pending.pop(0)])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _ops_sent(raw: RawPeer) -> list[int]:
    return [message[2] for message in raw.received if message[0] == Kind.REQUEST]


def _names_sent(raw: RawPeer) -> list[str]:
    return [item for message in raw.received if message[0] == Kind.REQUEST
            for item in message[3:] if isinstance(item, str)]


@pytest.mark.parametrize("reply", ["another ndarray netref", "a list", "a dict"])
def test_asarray_takes_only_an_array_by_value(hostile: tuple[Connection, RawPeer],
                                              reply: str) -> None:
    victim, raw = hostile
    proxy = _netref_from(victim, raw, NDARRAY_TYPE)
    answer = {"another ndarray netref": ref(8, 2, NDARRAY_TYPE),
              "a list": ExtType(Ext.LIST, packb([1, 2, 3])),
              "a dict": ExtType(Ext.DICT, packb(["__array__", 1]))}[reply]
    stop = threading.Event()
    thread = _answer_obtains(raw, [answer], stop)
    try:
        with pytest.raises(TypeError, match="answered for an array"):
            numpy.asarray(proxy)
    finally:
        stop.set()
        thread.join(5)
    assert _ops_sent(raw).count(Op.OBTAIN) == 1
    assert [name for name in _names_sent(raw) if name in LOCAL_DENIED] == []
    assert not victim.closed


def test_asarray_builds_the_array_from_data(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    proxy = _netref_from(victim, raw, NDARRAY_TYPE)
    stop = threading.Event()
    thread = _answer_obtains(raw, [ExtType(Ext.NDARRAY, packb(GOOD))], stop)
    try:
        assert numpy.asarray(proxy, dtype="f8").tolist() == [1.0, 2.0]
    finally:
        stop.set()
        thread.join(5)
    assert _ops_sent(raw).count(Op.OBTAIN) == 1


def test_asarray_of_an_object_dtype_closes_the_connection(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    proxy = _netref_from(victim, raw, NDARRAY_TYPE)
    stop = threading.Event()
    thread = _answer_obtains(raw, [ExtType(Ext.NDARRAY, packb(BAD_ARRAYS["object kind"]))],
                             stop)
    try:
        with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
            numpy.asarray(proxy)
    finally:
        stop.set()
        thread.join(5)


@pytest.mark.parametrize(("size", "chunk"), [(50 << 20, b""), (50, b"x" * 100)])
def test_a_lying_chunked_obtain_ends_with_an_error(hostile: tuple[Connection, RawPeer],
                                                   size: int, chunk: bytes) -> None:
    """A peer announcing a huge value and sending nothing (or too much per READ) makes
    obtain fail at once; the victim allocated only what arrived."""
    victim, raw = hostile
    proxy = _netref_from(victim, raw, NDARRAY_TYPE)
    marker = [values.LARGE_MARKER, int(Ext.NDARRAY), ["|u1", [size], False, 0, "C"],
              [size], ref(9, 3, ["remote_kernel.protocol.values", "Snapshot", [], [], 0, ""])]
    stop = threading.Event()
    thread = _answer_obtains(raw, [marker, chunk], stop)
    try:
        with pytest.raises(rk.ProtocolError, match="malformed chunk"):
            rk.obtain(proxy)
    finally:
        stop.set()
        thread.join(5)
    assert Op.READ in _ops_sent(raw)


def test_fields_are_plain_data_on_the_wire() -> None:
    """What a numpy/pandas value looks like to msgpack: strings, numbers, arrays, bytes."""
    pandas = pytest.importorskip("pandas")
    boxer = _boxer()
    payload = pack(boxer.box_value(pandas.DataFrame({"x": [1.5]}, index=["r"])))
    ext = msgpack.unpackb(payload)
    fields = msgpack.unpackb(ext.data)

    def plain(value: Any) -> bool:
        if isinstance(value, list):
            return all(plain(item) for item in value)
        return value is None or isinstance(value, (bool, int, float, str, bytes))

    assert ext.code == Ext.PANDAS and plain(fields)


def test_categories_of_categories_nest_only_so_deep() -> None:
    pytest.importorskip("pandas")
    index: Any = ["index", ["numpy", _array("<i8", [1], b"\0" * 8)], None, None]
    for _ in range(50):
        index = ["index", ["category", _array("|i1", [1], b"\0"), index, False], None, None]
    with pytest.raises(rk.ProtocolError, match="nested too deeply"):
        _decode(Ext.PANDAS, index)


# -- standard-library values from a hostile peer ------------------------------------------


def _std(code: int, fields: Any) -> ExtType:
    return ExtType(code, fields if type(fields) is bytes else packb(fields))


BAD_STD = {
    "datetime month 13": _std(Ext.DATETIME, [2024, 13, 1, 0, 0, 0, 0, 0, None]),
    "datetime field a string": _std(Ext.DATETIME, [2024, "1", 1, 0, 0, 0, 0, 0, None]),
    "datetime field a bool": _std(Ext.DATETIME, [2024, True, 1, 0, 0, 0, 0, 0, None]),
    "datetime fold 2": _std(Ext.DATETIME, [2024, 1, 1, 0, 0, 0, 0, 2, None]),
    "datetime too few fields": _std(Ext.DATETIME, [2024, 1, 1]),
    "datetime year a big int": _std(Ext.DATETIME, [ExtType(Ext.BIGINT, b"9" * 100), 1, 1,
                                                   0, 0, 0, 0, 0, None]),
    "datetime offset of a day": _std(Ext.DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0,
                                                    ["offset", 86_400_000_000, None]]),
    "datetime zone path": _std(Ext.DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0,
                                              ["zone", "../../etc/passwd"]]),
    "datetime zone absolute": _std(Ext.DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0,
                                                  ["zone", "/etc/localtime"]]),
    "datetime zone of another kind": _std(Ext.DATETIME, [2024, 1, 1, 0, 0, 0, 0, 0,
                                                         ["pytz", "UTC"]]),
    "datetime with a reference inside": _std(Ext.DATETIME, [
        2024, 1, 1, 0, 0, 0, 0, 0, ref(5, 1, ["m", "T", [], [], 0, ""])]),
    "time hour 24": _std(Ext.TIME, [24, 0, 0, 0, 0, None]),
    "date day 0": _std(Ext.DATE, [2024, 1, 0]),
    "timedelta seconds out of range": _std(Ext.TIMEDELTA, [0, 86_400, 0]),
    "timedelta days past the bound": _std(Ext.TIMEDELTA, [10**9, 0, 0]),
    "decimal of 10**9 digits announced": _std(Ext.DECIMAL, [0, "1", 10**9]),
    "decimal with too many digits": _std(Ext.DECIMAL, [0, "1" * 5000, 0]),
    "decimal digits not ascii": _std(Ext.DECIMAL, [0, "\u0663", 0]),
    "decimal digits as an expression": _std(Ext.DECIMAL, [0, "1e9", 0]),
    "decimal sign 2": _std(Ext.DECIMAL, [2, "1", 0]),
    "decimal exponent a letter": _std(Ext.DECIMAL, [0, "1", "x"]),
    "fraction over zero": _std(Ext.FRACTION, [1, 0]),
    "fraction of huge bytes": _std(Ext.FRACTION, [b"\1" * 5000, 1]),
    "uuid of 15 bytes": _std(Ext.UUID, b"\0" * 15),
    "path of another flavour": _std(Ext.PATH, ["vms", False, b"x"]),
    "path text a str": _std(Ext.PATH, ["posix", False, "x"]),
    "path not utf-8": _std(Ext.PATH, ["posix", False, b"\xff"]),
    "path concrete not a bool": _std(Ext.PATH, ["posix", 1, b"x"]),
    "enum module not a name": _std(Ext.ENUM, ["os; rm", "X", "A"]),
    "fields a map": _std(Ext.DATE, {"year": 2024}),
    "fields not msgpack": _std(Ext.DATE, b"\xc1"),
}


@pytest.mark.parametrize("name", sorted(BAD_STD))
def test_malformed_standard_values_refuse_the_message(name: str) -> None:
    """Decoded alone (not in a message), a malformed value is a ProtocolError."""
    with pytest.raises(rk.ProtocolError):
        _boxer().decode(packb(BAD_STD[name]))


def test_a_malformed_standard_value_fails_only_its_request() -> None:
    """Inside a request, the request fails with the reason; inside a reply, the waiting
    call does; a well-formed one after it decodes normally."""
    boxer = _boxer()
    request = boxer.decode(packb([Kind.REQUEST, 7, Op.CALL, BAD_STD["datetime month 13"]]))
    assert request[:3] == (Kind.REQUEST, 7, unboxing.REFUSED)
    assert isinstance(request[3].error, rk.ProtocolError)
    assert "malformed datetime" in str(request[3].error)
    reply = boxer.decode(packb([Kind.REPLY, 8, [1, BAD_STD["uuid of 15 bytes"]]]))
    assert reply[:2] == (Kind.EXCEPTION, 8) and isinstance(reply[2], rk.ProtocolError)
    good = boxer.decode(packb([Kind.REPLY, 9, _std(Ext.DATE, [2024, 2, 29])]))
    assert good == (Kind.REPLY, 9, datetime.date(2024, 2, 29))


@pytest.mark.parametrize("name", ["datetime month 13", "decimal of 10**9 digits announced",
                                  "path not utf-8", "uuid of 15 bytes",
                                  "datetime with a reference inside"])
def test_a_hostile_reply_fails_the_call_not_the_connection(
        hostile: tuple[Connection, RawPeer], name: str) -> None:
    victim, raw = hostile
    proxy = _netref_from(victim, raw, ["m", "Clock", ["now"], [], 0, ""])
    stop = threading.Event()
    thread = _answer_obtains(raw, [BAD_STD[name], _std(Ext.DATE, [2024, 2, 29])], stop)
    try:
        with pytest.raises(rk.ProtocolError, match="malformed"):
            proxy.now()
        assert str(proxy.now()) == "2024-02-29"  # the next request on it works
    finally:
        stop.set()
        thread.join(5)
    assert not victim.closed


def test_a_hostile_request_gets_an_error_reply_and_the_server_goes_on() -> None:
    """A raw client sends a request whose argument is a malformed datetime to a serving
    connection: it gets an EXCEPTION reply, and its next request is answered."""
    left, right = socket.socketpair()
    server = Connection(SocketTransport(left, "raw client"), rk.ClassicService, name="raw")
    serving = server.serve_in_background()
    raw = RawPeer(right)
    try:
        raw.send([Kind.REQUEST, 1, Op.PING, BAD_STD["datetime month 13"]])
        reply = raw.recv_kind((Kind.REPLY, Kind.EXCEPTION), timeout=10)
        assert reply[0] == Kind.EXCEPTION and reply[1] == 1
        assert "malformed datetime" in reply[2].message
        raw.send([Kind.REQUEST, 2, Op.PING, _std(Ext.DATE, [2024, 2, 29])])
        reply = raw.recv_kind((Kind.REPLY, Kind.EXCEPTION), timeout=10)
        assert reply[0] == Kind.REPLY and reply[1] == 2
        assert msgpack.unpackb(reply[2].data) == [2024, 2, 29]
        assert not server.closed
    finally:
        server.close()
        serving.stop(5)
        right.close()


def test_a_refusal_cannot_be_asked_for_by_a_peer() -> None:
    from remote_kernel.protocol.handlers import HANDLERS

    with pytest.raises(rk.ProtocolError, match="unknown request opcode"):
        HANDLERS[unboxing.REFUSED](None, "any argument a peer sends")

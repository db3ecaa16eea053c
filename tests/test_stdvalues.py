"""Standard-library values by value (datetime, time zones, Decimal, Fraction, UUID, paths),
enum members in copies, numpy scalars, and ``numpy.asarray`` of pandas netrefs, through a
real server process."""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import http
import pathlib
import shutil
import socket
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.messages import Ext, Op
from tests.hardening.rawpeer import RawPeer, packb

SETUP = """
import datetime, decimal, enum, fractions, http, pathlib, uuid, zoneinfo
berlin = zoneinfo.ZoneInfo('Europe/Berlin')
std_values = {
    'naive': datetime.datetime(2024, 3, 31, 12, 30, 15, 123456),
    'utc': datetime.datetime(2024, 3, 31, 12, 30, tzinfo=datetime.timezone.utc),
    'offset': datetime.datetime(1999, 12, 31, 23, 59, tzinfo=datetime.timezone(
        datetime.timedelta(hours=-5, minutes=-30))),
    'named_offset': datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone(
        datetime.timedelta(hours=9), 'JST')),
    'zone_fold': datetime.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=berlin),
    'date': datetime.date(2024, 2, 29),
    'time': datetime.time(23, 59, 59, 999999),
    'time_tz_fold': datetime.time(1, 30, fold=1, tzinfo=datetime.timezone(
        datetime.timedelta(hours=1))),
    'timedelta': datetime.timedelta(days=-3, seconds=5, microseconds=7),
    'decimal': decimal.Decimal('1.10'),
    'decimal_negative_zero': decimal.Decimal('-0.000'),
    'decimal_big': decimal.Decimal('-12345678901234567890.123456789012345678901E+300'),
    'decimal_infinity': decimal.Decimal('-Infinity'),
    'fraction': fractions.Fraction(-3, 7),
    'fraction_big': fractions.Fraction(10**40 + 1, 3**50),
    'uuid': uuid.UUID('12345678-1234-5678-1234-567812345678'),
    'pure_posix': pathlib.PurePosixPath('/data/run 1/ä.h5'),
    'pure_windows': pathlib.PureWindowsPath(r'C:\\data\\run 1\\a.h5'),
    'posix': pathlib.PosixPath('/tmp/results'),
    'zone': berlin,
    'utc_zone': datetime.timezone.utc,
    'named_zone': datetime.timezone(datetime.timedelta(hours=-3, minutes=-30), 'NST'),
}
"""


def _local_values() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(SETUP, namespace)  # noqa: S102 - our own fixture code
    return namespace["std_values"]


@pytest.fixture
def lab(classic: rk.Connection) -> rk.Connection:
    classic.execute(SETUP)
    return classic


def test_each_value_round_trips_equal_and_of_its_type(lab: rk.Connection) -> None:
    expected = _local_values()
    remote = lab.namespace["std_values"]
    for name, original in expected.items():
        value = remote[name]  # a result: by value, no netref
        assert type(value) is type(original), name
        assert repr(value) == repr(original), name  # fold, zone, exponent, name included
        assert value == original, name
        lab.namespace["back"] = value  # and back as an argument
        assert lab.eval(f"type(back) is type(std_values[{name!r}]) and "
                        f"repr(back) == repr(std_values[{name!r}])"), name
    assert str(remote["decimal"]) == "1.10"
    assert remote["zone_fold"].tzinfo is zoneinfo.ZoneInfo("Europe/Berlin")
    assert remote["zone_fold"].utcoffset() == datetime.timedelta(hours=1)  # fold=1 kept
    assert remote["named_offset"].tzname() == "JST"
    assert remote["utc"].tzinfo is datetime.timezone.utc


ZONE_FACTS = """
def zone_facts(zone, *instants):
    exact = type(zone) in (datetime.timezone, zoneinfo.ZoneInfo)
    cached = type(zone) is not zoneinfo.ZoneInfo or zone is zoneinfo.ZoneInfo(zone.key)
    return exact, cached, [(zone.utcoffset(when.astimezone(zone)),
                            zone.tzname(when.astimezone(zone))) for when in instants]
"""
INSTANTS = (datetime.datetime(2024, 3, 31, 0, 59, tzinfo=datetime.timezone.utc),
            datetime.datetime(2024, 3, 31, 1, 1, tzinfo=datetime.timezone.utc),
            datetime.datetime(1900, 1, 1, tzinfo=datetime.timezone.utc))


def test_time_zones_travel_by_value_both_ways(lab: rk.Connection) -> None:
    paris = lab.eval("zoneinfo.ZoneInfo('Europe/Paris')")
    assert paris is zoneinfo.ZoneInfo("Europe/Paris")  # the cached zone of its key
    assert lab.eval("datetime.timezone.utc") is datetime.timezone.utc
    nepal = lab.eval("datetime.timezone(datetime.timedelta(hours=5, minutes=45), 'NPT')")
    assert type(nepal) is datetime.timezone and nepal.tzname(None) == "NPT"
    assert nepal == datetime.timezone(datetime.timedelta(hours=5, minutes=45))
    assert lab.eval("[datetime.timezone(datetime.timedelta(seconds=-1))]")[0] == \
        datetime.timezone(datetime.timedelta(seconds=-1))
    lab.execute(ZONE_FACTS)
    zone_facts = lab.namespace["zone_facts"]
    for zone in (paris, nepal, zoneinfo.ZoneInfo("America/St_Johns"), datetime.timezone.utc):
        expected = [(zone.utcoffset(when.astimezone(zone)), zone.tzname(when.astimezone(zone)))
                    for when in INSTANTS]
        assert zone_facts(zone, *INSTANTS) == (True, True, expected), zone
    lab.namespace["sent"] = zoneinfo.ZoneInfo.no_cache("Asia/Tokyo")
    assert lab.eval("sent is zoneinfo.ZoneInfo('Asia/Tokyo')")


class _Zone(zoneinfo.ZoneInfo):
    pass


def test_zone_subclasses_and_zones_from_files_stay_by_reference(lab: rk.Connection) -> None:
    lab.execute(f"class Zone(zoneinfo.ZoneInfo):\n    pass\n"
                f"with open({_zone_file('Europe/Paris')!r}, 'rb') as handle:\n"
                f"    read = zoneinfo.ZoneInfo.from_file(handle, key='Europe/Paris')")
    for expr in ("Zone('Europe/Paris')", "read", "datetime.datetime(2024, 1, 1, tzinfo=read)"):
        assert rk.is_netref(lab.eval(expr)), expr
    with pytest.raises(TypeError, match="not an acceptable base type"):
        lab.execute("class Fixed(datetime.timezone):\n    pass")
    lab.execute("import remote_kernel")
    lab.namespace["mine"] = _Zone("Europe/Paris")
    assert lab.eval("remote_kernel.is_netref(mine) and type(mine) is not zoneinfo.ZoneInfo")
    assert lab.eval("str(mine)") == "Europe/Paris"


@pytest.fixture
def raw(classic_server: Any) -> Iterator[RawPeer]:
    """A client of the real server that speaks the wire format by hand."""
    sock = socket.create_connection(("127.0.0.1", classic_server.port), timeout=10)
    reader = client_handshake(SocketTransport(sock, "raw"), classic_server.token, 10)
    yield RawPeer(sock, reader)
    sock.close()


def _zone(fields: Any) -> ExtType:
    return ExtType(Ext.TZINFO, packb(fields))


HOSTILE_ZONES = {
    "path traversal": (["zone", "../../etc/passwd"], "malformed time zone key"),
    "absolute path": (["zone", "/etc/passwd"], "malformed time zone key"),
    "NUL": (["zone", "Europe/Paris\0"], "malformed time zone key"),
    "a table with a dot": (["zone", "zone.tab"], "malformed time zone key"),
    "a table, not a zone": (["zone", "leapseconds"], "TZif"),
    "a link out of the database": (["zone", "Evil/Out"], "leads out of the time zone"),
    "unknown here": (["zone", "Mars/Olympus"], "which this side does not know"),
    "offset of a day": (["offset", 86_400_000_000, None], "integer in range"),
    "name too long": (["offset", 0, "n" * 1025], "malformed time zone name"),
    "nil": (None, "malformed time zone"),
}


def test_hostile_zones_fail_their_request_and_open_nothing(lab: rk.Connection, raw: RawPeer,
                                                          tmp_path: pathlib.Path) -> None:
    """A raw client sends each hostile zone to the real server: each request gets an error
    that says why, the server opens no file for it (an audit hook there watches ``open``),
    and the next request is answered."""
    root = tmp_path / "db"
    (root / "Evil").mkdir(parents=True)
    shutil.copyfile(_zone_file("Europe/Berlin"), tmp_path / "secret")
    (root / "Evil" / "Out").symlink_to(tmp_path / "secret")  # a valid zone, outside
    lab.execute("import sys\n"
                "tz_opened = []\n"
                "def tz_watch(event, args, opened=tz_opened):\n"
                "    if event == 'open' and opened is not None:\n"
                "        opened.append(str(args[0]))\n"
                "sys.addaudithook(tz_watch)\n"
                f"zoneinfo.reset_tzpath([{str(root)!r}, *zoneinfo.TZPATH])")
    try:
        for name, (fields, reason) in HOSTILE_ZONES.items():
            ok, error = raw.request(Op.PING, _zone(fields), timeout=10)
            assert not ok and reason in error.message, (name, error)
            ok, echo = raw.request(Op.PING, _zone(["zone", "Europe/Paris"]), timeout=10)
            assert ok and echo.code == Ext.TZINFO, name
        opened = lab.eval("tuple(tz_opened)")  # a copy, by value
    finally:
        lab.execute("zoneinfo.reset_tzpath()\ntz_opened.clear()\n"
                    "tz_watch.__defaults__ = (None,)")
    # Only the database's own files: Paris, and the table that is no zone.
    assert {pathlib.Path(path).name for path in opened} <= {"Paris", "leapseconds"}, opened
    assert not any(name in path for path in opened for name in ("Evil", "secret", "passwd"))
    assert lab.ping() > 0


def test_special_decimals_keep_their_kind(lab: rk.Connection) -> None:
    nan = lab.eval("decimal.Decimal('-sNaN123')")
    assert type(nan) is decimal.Decimal and nan.is_snan() and nan.is_signed()
    assert str(nan) == "-sNaN123"
    assert lab.eval("decimal.Decimal('NaN')").is_qnan()


def test_values_travel_inside_tuples_and_as_arguments(lab: rk.Connection) -> None:
    lab.execute("def kinds(*args, **kwargs):\n"
                "    return tuple(type(a).__name__ for a in args + tuple(kwargs.values()))")
    local = _local_values()
    args = (local["naive"], (local["decimal"], local["uuid"]), local["pure_windows"])
    assert lab.namespace["kinds"](*args, when=local["date"]) == \
        ("datetime", "tuple", "PureWindowsPath", "date")
    both = lab.eval("(std_values['date'], (std_values['fraction'], 1))")
    assert both == (local["date"], (local["fraction"], 1))
    stamp = lab.eval("datetime.datetime(2024, 1, 1)")
    assert datetime.datetime(2024, 1, 2) - stamp == datetime.timedelta(days=1)  # no request


def test_obtain_copies_them_in_containers(lab: rk.Connection) -> None:
    copy = rk.obtain(lab.eval("[std_values['date'], {'when': std_values['zone_fold']}]"))
    assert copy == [datetime.date(2024, 2, 29),
                    {"when": _local_values()["zone_fold"]}]
    back = rk.deliver(lab, [pathlib.PurePosixPath("/x"), decimal.Decimal("2.50")])
    lab.namespace["back"] = back
    assert lab.eval("[type(item).__name__ for item in back], str(back[1])") == \
        (["PurePosixPath", "Decimal"], "2.50")


def test_a_windows_path_from_a_windows_server_stays_pure_here(lab: rk.Connection) -> None:
    """A service on a Windows server returns its WindowsPath as ("windows", concrete): here
    (POSIX) it is a PureWindowsPath; a PosixPath from this POSIX server stays concrete."""
    lab.execute("class Instrument:\n"
                "    def data_file(self):\n"
                "        return pathlib.PureWindowsPath(r'D:\\runs\\2024\\scan.h5')\n"
                "    def log_dir(self):\n"
                "        return pathlib.Path('/var/log/lab')\n"
                "inst = Instrument()")
    inst = lab.namespace["inst"]
    path = inst.data_file()
    assert type(path) is pathlib.PureWindowsPath
    assert path == pathlib.PureWindowsPath(r"D:\runs\2024\scan.h5") and path.drive == "D:"
    log_dir = inst.log_dir()
    assert type(log_dir) is pathlib.PosixPath and log_dir == pathlib.Path("/var/log/lab")


def test_subclasses_and_foreign_zones_stay_by_reference(lab: rk.Connection) -> None:
    lab.execute("class Stamp(datetime.datetime):\n    pass\n"
                "class Shifted(datetime.tzinfo):\n"
                "    def utcoffset(self, dt):\n        return datetime.timedelta(hours=2)\n"
                "    def dst(self, dt):\n        return None\n"
                "class Where(pathlib.PurePosixPath):\n    pass\n"
                "class Amount(decimal.Decimal):\n    pass\n")
    for expr in ("Stamp(2024, 1, 1)", "Where('/x')", "Amount('1.5')",
                 "datetime.datetime(2024, 1, 1, tzinfo=Shifted())"):
        assert rk.is_netref(lab.eval(expr)), expr
    with pytest.raises(TypeError, match="time zone"):
        rk.obtain(lab.eval("datetime.datetime(2024, 1, 1, tzinfo=Shifted())"))
    huge = lab.eval("decimal.Decimal('1E+2000000')")  # beyond the bounds: a reference
    assert rk.is_netref(huge)
    assert lab.ping() > 0


def test_pandas_timestamps_stay_as_they_were(lab: rk.Connection) -> None:
    """pandas.Timestamp is a datetime subclass: a reference, and not copied by value."""
    pytest.importorskip("pandas")
    lab.execute("import pandas as pd\nts = pd.Timestamp('2024-01-01 12:00', tz='UTC')")
    stamp = lab.namespace["ts"]
    assert rk.is_netref(stamp)
    with pytest.raises(TypeError, match="Timestamp"):
        rk.obtain(stamp)


def test_a_zone_unknown_here_fails_only_its_request(lab: rk.Connection, tmp_path) -> None:
    """The server knows a zone this side does not: the request that carries it fails with
    a TypeError naming it; the connection goes on."""
    zone_dir = tmp_path / "zones" / "Mars"
    zone_dir.mkdir(parents=True)
    zone_dir.joinpath("Olympus").write_bytes(
        pathlib.Path(_zone_file("Europe/Berlin")).read_bytes())
    lab.execute(f"zoneinfo.reset_tzpath([{str(tmp_path / 'zones')!r}])\n"
                f"mars = datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo('Mars/Olympus'))\n"
                f"zoneinfo.reset_tzpath()")
    with pytest.raises(TypeError, match="'Mars/Olympus'"):
        lab.eval("mars")
    assert lab.eval("mars.year") == 2024  # the connection is fine


def _zone_file(key: str) -> str:
    for root in zoneinfo.TZPATH:
        candidate = pathlib.Path(root, key)
        if candidate.is_file():
            return str(candidate)
    pytest.skip("no system time zone database")


class _LocalOnly(enum.Enum):
    A = 1


def test_enum_members_are_copied_as_the_local_member(lab: rk.Connection) -> None:
    status = lab.eval("http.HTTPStatus.NOT_FOUND")
    assert rk.is_netref(status)  # by default a reference
    assert rk.obtain(status) is http.HTTPStatus.NOT_FOUND
    assert rk.obtain(lab.eval("[http.HTTPStatus.OK]")) == [http.HTTPStatus.OK]
    lab.namespace["sent"] = rk.deliver(lab, http.HTTPStatus.CREATED)
    assert lab.eval("sent is http.HTTPStatus.CREATED")
    lab.execute("class Mode(enum.Enum):\n    FAST = 1\n    SLOW = 2\n")
    with pytest.raises(TypeError, match=r"enum \S*Mode"):
        rk.obtain(lab.eval("Mode.FAST"))
    with pytest.raises(TypeError, match=r"_LocalOnly"):
        rk.deliver(lab, _LocalOnly.A)
    assert lab.ping() > 0


def test_numpy_scalars_keep_their_type(lab: rk.Connection) -> None:
    numpy = pytest.importorskip("numpy")
    lab.execute("import numpy as np")
    single = rk.obtain(lab.eval("np.float32(2.5)"))
    assert type(single) is numpy.float32 and single == 2.5
    minute = rk.obtain(lab.eval("np.datetime64('2024-05-01T10:00', 'm')"))
    assert type(minute) is numpy.datetime64 and minute.dtype == numpy.dtype("M8[m]")
    span = rk.obtain(lab.eval("np.timedelta64(7, 'ms')"))
    assert span.dtype == numpy.dtype("m8[ms]") and span == numpy.timedelta64(7, "ms")


def test_numpy_asarray_of_pandas_netrefs_is_one_request(lab: rk.Connection) -> None:
    numpy = pytest.importorskip("numpy")
    pytest.importorskip("pandas")
    lab.execute("import numpy as np, pandas as pd\n"
                "df = pd.DataFrame({'x': np.arange(20_000.0), 'y': -np.arange(20_000.0)})\n"
                "mixed = pd.DataFrame({'ok': [1, 2], 'bad': [1, object()]})\n"
                "config = {'a': 1, 'b': 2}")
    frame = lab.namespace["df"]
    expected = rk.obtain(frame).to_numpy()
    before = lab.stats["requests"]
    array = numpy.asarray(frame)
    assert lab.stats["requests"] - before == 1
    assert array.shape == (20_000, 2) and numpy.array_equal(array, expected)
    series, index = frame["y"], frame.index
    before = lab.stats["requests"]
    assert numpy.array_equal(numpy.asarray(series), -numpy.arange(20_000.0))
    assert numpy.array_equal(numpy.array(index), numpy.arange(20_000))
    assert lab.stats["requests"] - before == 2
    assert numpy.asarray(frame, dtype="f4").dtype == numpy.float32
    with pytest.raises(TypeError, match="column 'bad'"):
        numpy.asarray(lab.namespace["mixed"])
    # A dict is no sequence to numpy: a 0-d object array, as for a local dict (no keys).
    config = lab.namespace["config"]
    held = numpy.asarray(config)
    assert held.shape == () and held[()] is config
    assert lab.ping() > 0


def test_values_that_would_be_costly_to_use_go_by_reference(classic: Any) -> None:
    # A peer's Decimal with a huge exponent would make int() compute a huge power; a
    # Fraction with terms past Python's 4300-digit str() limit could not be shown.
    huge_exponent = classic.eval("__import__('decimal').Decimal('1E+100000')")
    assert not isinstance(huge_exponent, decimal.Decimal)
    wide = classic.eval("__import__('fractions').Fraction(10**4400 + 1, 3)")
    assert not isinstance(wide, fractions.Fraction)
    fine = classic.eval("__import__('fractions').Fraction(10**4000 + 1, 3)")
    assert isinstance(fine, fractions.Fraction) and str(fine)
    assert classic.eval("__import__('decimal').Decimal('1E+6000')") == decimal.Decimal("1E+6000")

"""Time zones on their own (``Ext.TZINFO``), sans IO: a Boxer encodes them, another decodes
them. One encoding with a datetime's tz; bounds checked; a key never reaches ``ZoneInfo``
unless it names a file inside the time zone database."""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil
import zoneinfo
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.protocol import stdvalues, unboxing
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.messages import Ext, Kind, Op
from remote_kernel.protocol.objects import ObjectTable

DAY_MICROS = 86_400_000_000


def _boxer() -> Boxer:
    return Boxer(ObjectTable(), describe=lambda cls: ("m", cls.__name__, (), (), 0, ""),
                 make_proxy=lambda oid, descriptor: ("proxy", oid), proxy_oid=lambda o: None,
                 peer_name=lambda: "peer")


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _round_trip(value: Any) -> Any:
    return _boxer().decode(_packb(_boxer().box(value)))


def _zone(fields: Any) -> ExtType:
    return ExtType(Ext.TZINFO, fields if type(fields) is bytes else _packb(fields))


def _system_zone(key: str) -> pathlib.Path:
    for root in zoneinfo.TZPATH:
        if os.path.isfile(os.path.join(root, key)):
            return pathlib.Path(root, key)
    pytest.skip("no system time zone database")


PARIS = "Europe/Paris"
ZONES = {
    "utc": datetime.timezone.utc,
    "offset": datetime.timezone(datetime.timedelta(hours=-5, minutes=-30)),
    "named offset": datetime.timezone(datetime.timedelta(hours=9), "JST"),
    "sub-minute offset": datetime.timezone(datetime.timedelta(seconds=-3601, microseconds=7)),
    "largest offset": datetime.timezone(datetime.timedelta(microseconds=DAY_MICROS - 1)),
    "smallest offset": datetime.timezone(datetime.timedelta(microseconds=1 - DAY_MICROS)),
    "longest name": datetime.timezone(datetime.timedelta(0), "n" * stdvalues.MAX_NAME),
    "zoneinfo": zoneinfo.ZoneInfo(PARIS),
    "zoneinfo UTC": zoneinfo.ZoneInfo("UTC"),
}
INSTANTS = [datetime.datetime(2024, 3, 31, 0, 59, tzinfo=datetime.timezone.utc),
            datetime.datetime(2024, 10, 27, 0, 30, tzinfo=datetime.timezone.utc),
            datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)]


@pytest.mark.parametrize("name", sorted(ZONES))
def test_a_zone_round_trips_as_its_own_type(name: str) -> None:
    zone = ZONES[name]
    boxed = _boxer().box(zone)
    assert type(boxed) is ExtType and boxed.code == Ext.TZINFO
    back = _round_trip(zone)
    assert type(back) is type(zone) and back == zone and repr(back) == repr(zone)
    for instant in INSTANTS:
        local = instant.astimezone(zone)
        assert back.utcoffset(local) == zone.utcoffset(local)
        assert back.tzname(local) == zone.tzname(local)
        assert back.dst(local) == zone.dst(local)


def test_a_zoneinfo_zone_is_the_cached_zone_of_its_key() -> None:
    assert _round_trip(zoneinfo.ZoneInfo(PARIS)) is zoneinfo.ZoneInfo(PARIS)
    assert _round_trip(datetime.timezone.utc) is datetime.timezone.utc
    # A no_cache zone is the zone of its key: it arrives as the cached one.
    assert _round_trip(zoneinfo.ZoneInfo.no_cache(PARIS)) is zoneinfo.ZoneInfo(PARIS)


def test_one_encoding_for_a_zone_alone_and_a_datetimes_zone() -> None:
    for zone in ZONES.values():
        alone = _boxer().box(zone)
        stamp = _boxer().box(datetime.datetime(2024, 1, 1, tzinfo=zone))
        assert msgpack.unpackb(alone.data) == msgpack.unpackb(stamp.data)[-1]
    assert msgpack.unpackb(_boxer().box(ZONES["named offset"]).data) == \
        ["offset", 9 * 3600 * 1_000_000, "JST"]
    assert msgpack.unpackb(_boxer().box(ZONES["offset"]).data) == \
        ["offset", -(5 * 3600 + 30 * 60) * 1_000_000, None]
    assert msgpack.unpackb(_boxer().box(ZONES["zoneinfo"]).data) == ["zone", PARIS]


def test_zones_travel_inside_values_and_in_copies() -> None:
    value = (ZONES["zoneinfo"], (ZONES["named offset"], 1))
    assert _round_trip(value) == value
    boxer = _boxer()
    copy = boxer.decode(_packb(boxer.box_value([ZONES["utc"], {"tz": ZONES["zoneinfo"]}])))
    assert copy == [datetime.timezone.utc, {"tz": zoneinfo.ZoneInfo(PARIS)}]


def test_timezone_cannot_be_subclassed() -> None:
    with pytest.raises(TypeError, match="not an acceptable base type"):
        type("Mine", (datetime.timezone,), {})


class _Zone(zoneinfo.ZoneInfo):
    pass


def _is_reference(boxed: Any) -> bool:
    return type(boxed) is ExtType and boxed.code in (Ext.REF, Ext.REFDESC)


def test_what_cannot_travel_by_key_or_by_value_goes_by_reference() -> None:
    surrogate = datetime.timezone(datetime.timedelta(hours=1), "\ud800")
    too_long = datetime.timezone(datetime.timedelta(hours=1), "n" * (stdvalues.MAX_NAME + 1))
    with _system_zone(PARIS).open("rb") as handle:
        from_file = zoneinfo.ZoneInfo.from_file(handle, key=PARIS)  # its key says nothing
    for zone in (_Zone(PARIS), surrogate, too_long, from_file):
        boxer = _boxer()
        assert _is_reference(boxer.box(zone)), zone
        assert _is_reference(boxer.box(datetime.datetime(2024, 1, 1, tzinfo=zone))), zone
        with pytest.raises(TypeError):
            boxer.box_value(zone)


# -- from a hostile peer -------------------------------------------------------------------


@pytest.fixture
def zoneinfo_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys that reach ``zoneinfo.ZoneInfo`` (the only place a key opens a file)."""
    keys: list[str] = []
    real = zoneinfo.ZoneInfo

    def spy(key: str) -> Any:
        keys.append(key)
        return real(key)

    monkeypatch.setattr(zoneinfo, "ZoneInfo", spy)
    return keys


BAD_ZONES = {
    "offset of a day": ["offset", DAY_MICROS, None],
    "offset of minus a day": ["offset", -DAY_MICROS, None],
    "offset a float": ["offset", 1.5, None],
    "offset a bool": ["offset", True, None],
    "offset a big int": ["offset", ExtType(Ext.BIGINT, b"9" * 40), None],
    "name too long": ["offset", 0, "n" * (stdvalues.MAX_NAME + 1)],
    "name bytes": ["offset", 0, b"JST"],
    "name a reference": ["offset", 0, ExtType(Ext.REF, b"\0" * 12)],
    "offset without its name field": ["offset", 0],
    "nil": None,
    "empty": [],
    "a string": "Europe/Paris",
    "another kind": ["pytz", "UTC"],
    "zone with two keys": ["zone", "UTC", "UTC"],
    "path traversal": ["zone", "../../etc/passwd"],
    "traversal inside a key": ["zone", "Europe/../../../etc/passwd"],
    "absolute path": ["zone", "/etc/passwd"],
    "absolute zone file": ["zone", "/usr/share/zoneinfo/UTC"],
    "NUL": ["zone", "UTC\0"],
    "NUL inside": ["zone", "Europe/Paris\0/../x"],
    "dot": ["zone", "."],
    "empty key": ["zone", ""],
    "empty segment": ["zone", "Europe//Paris"],
    "trailing slash": ["zone", "Europe/"],
    "backslash": ["zone", "..\\..\\etc\\passwd"],
    "a file with a dot": ["zone", "zone.tab"],
    "key too long": ["zone", "A" * 65],
    "too many segments": ["zone", "/".join("A" * 6)],
    "key bytes": ["zone", b"UTC"],
    "key a map": ["zone", {"k": 1}],
    "not msgpack": b"\xc1",
}


@pytest.mark.parametrize("name", sorted(BAD_ZONES))
def test_a_malformed_zone_is_refused_and_opens_nothing(name: str,
                                                       zoneinfo_opens: list[str]) -> None:
    with pytest.raises(rk.ProtocolError, match="malformed tzinfo"):
        _boxer().decode(_packb(_zone(BAD_ZONES[name])))
    assert zoneinfo_opens == []


def test_a_non_zone_file_of_the_database_is_refused() -> None:
    _system_zone("leapseconds")  # a table, not a zone, in the database's directory
    with pytest.raises(rk.ProtocolError, match="malformed tzinfo.*TZif"):
        _boxer().decode(_packb(_zone(["zone", "leapseconds"])))


@pytest.fixture
def tzpath_with_a_way_out(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A time zone database whose ``Evil/Out`` links to a (valid) zone file outside it, and
    whose ``Good/In`` links inside; the system's database after it."""
    root, outside = tmp_path / "db", tmp_path / "secret"
    (root / "Evil").mkdir(parents=True)
    (root / "Good").mkdir()
    outside.mkdir()
    shutil.copyfile(_system_zone("Europe/Berlin"), outside / "zone")
    shutil.copyfile(_system_zone("Europe/Berlin"), root / "Berlin")
    (root / "Evil" / "Out").symlink_to(outside / "zone")
    (root / "Good" / "In").symlink_to(root / "Berlin")
    zoneinfo.reset_tzpath([str(root), *zoneinfo.TZPATH])
    yield root
    zoneinfo.reset_tzpath()
    zoneinfo.ZoneInfo.clear_cache(only_keys=["Evil/Out", "Good/In"])


def test_a_key_that_leads_out_of_the_database_opens_nothing(
        tzpath_with_a_way_out: pathlib.Path, zoneinfo_opens: list[str]) -> None:
    with pytest.raises(rk.ProtocolError, match="leads out of the time zone database"):
        _boxer().decode(_packb(_zone(["zone", "Evil/Out"])))
    stamp = ExtType(Ext.DATETIME, _packb([2024, 1, 1, 0, 0, 0, 0, 0, ["zone", "Evil/Out"]]))
    with pytest.raises(rk.ProtocolError, match="leads out of the time zone database"):
        _boxer().decode(_packb(stamp))  # nor as a datetime's zone
    assert zoneinfo_opens == []
    inside = _boxer().decode(_packb(_zone(["zone", "Good/In"])))  # a link that stays in
    assert inside.key == "Good/In" and zoneinfo_opens == ["Good/In"]


def test_a_zone_whose_key_leads_out_is_sent_by_reference(
        tzpath_with_a_way_out: pathlib.Path) -> None:
    """This side can load it (zoneinfo follows links); a peer would refuse the key."""
    local = zoneinfo.ZoneInfo("Evil/Out")
    assert _is_reference(_boxer().box(local))
    assert _is_reference(_boxer().box(datetime.datetime(2024, 1, 1, tzinfo=local)))


def test_an_unknown_key_is_not_here_not_malformed() -> None:
    boxer = _boxer()
    request = boxer.decode(_packb([Kind.REQUEST, 3, Op.CALL, _zone(["zone", "Mars/Olympus"])]))
    assert request[:3] == (Kind.REQUEST, 3, unboxing.REFUSED)
    error = request[3].error
    assert type(error) is TypeError and "'Mars/Olympus'" in str(error)


def test_a_malformed_zone_fails_only_its_message() -> None:
    boxer = _boxer()
    request = boxer.decode(_packb([Kind.REQUEST, 7, Op.CALL, _zone(BAD_ZONES["path traversal"])]))
    assert request[:3] == (Kind.REQUEST, 7, unboxing.REFUSED)
    assert isinstance(request[3].error, rk.ProtocolError)
    reply = boxer.decode(_packb([Kind.REPLY, 8, [1, _zone(BAD_ZONES["offset of a day"])]]))
    assert reply[:2] == (Kind.EXCEPTION, 8) and isinstance(reply[2], rk.ProtocolError)
    good = boxer.decode(_packb([Kind.REPLY, 9, _zone(["zone", PARIS])]))
    assert good == (Kind.REPLY, 9, zoneinfo.ZoneInfo(PARIS))

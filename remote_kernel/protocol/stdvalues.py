"""The immutable standard-library values that travel by value, like str and int:
``datetime`` (``datetime``, ``date``, ``time``, ``timedelta``, and the time zones
``datetime.timezone`` and ``zoneinfo.ZoneInfo``), ``Decimal``, ``Fraction``, ``UUID`` and the
paths of the standard flavours; and enum members copied by ``obtain``.

Exactly these types (``type(x) is ...``): a user subclass travels by reference, and so does a
value that cannot be carried faithfully (a datetime with a pytz or dateutil zone, a Decimal
beyond the bounds below): :class:`CannotEncode` tells the Boxer to send a reference instead.

Wire layouts
------------
Each is the msgpack array inside its ext type (``messages.Ext``), except UUID (raw bytes).

``DATETIME`` ``[year, month, day, hour, minute, second, microsecond, fold, tz]``
``DATE`` ``[year, month, day]``
``TIME`` ``[hour, minute, second, microsecond, fold, tz]``
    *tz* is nil (naive) or a zone's fields, as in ``TZINFO``.
``TZINFO`` a time zone on its own: ``["offset", microseconds, name or nil]`` for a
    ``datetime.timezone`` (its name only when it was given one; the offset strictly within
    a day, the name at most ``MAX_NAME`` characters), or ``["zone", key]`` for a
    ``zoneinfo.ZoneInfo``, rebuilt here as ``ZoneInfo(key)`` (the cached zone) when this
    side's time zone database has it (a file under ``zoneinfo.TZPATH``, or the ``tzdata``
    package when it is already imported), else refused with a ``TypeError`` naming the key.
    A key is a few path segments of letters, digits, ``_+-`` (no dot, no leading slash),
    and its file must resolve inside its ``TZPATH`` directory (``localtime`` is a link to
    ``/etc/localtime`` on Debian): a key never opens a file outside the database. A zone
    made from a file (``ZoneInfo.from_file``: its key, if any, does not say what is in it),
    or whose key would be refused so, travels by reference.
``TIMEDELTA`` ``[days, seconds, microseconds]``
``DECIMAL`` ``[sign, digits, exponent]``: Decimal's tuple form; *digits* a string of ASCII
    digits, *exponent* an int or ``"n"``/``"N"``/``"F"`` (NaN, sNaN, Infinity). Bounded: at
    most ``MAX_DIGITS`` digits and ``|exponent| <= MAX_EXPONENT``.
``FRACTION`` ``[numerator, denominator]``, each an int, or (outside 64 bits) its signed
    big-endian bytes, at most ``MAX_INT_BYTES``.
``UUID`` the 16 bytes.
``PATH`` ``[flavour, concrete, text]``: *flavour* ``"posix"`` or ``"windows"``, *concrete*
    whether it was a ``PosixPath``/``WindowsPath``, *text* ``str(path)`` in UTF-8 (with
    surrogates, as file names may hold). A concrete path comes back concrete only where its
    flavour is this system's, else as the pure path of its flavour.
``ENUM`` ``[module, qualname, member]``: only in a copy by value (``obtain``/``deliver``);
    decoded as the member of the class this process already has (looked up in
    ``sys.modules``, never imported), else a ``TypeError`` naming the enum.

Decoding evaluates nothing and imports nothing: every field is type- and range-checked
before a constructor sees it.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import fractions
import functools
import os
import pathlib
import re
import sys
import uuid
import zoneinfo  # imported here (a few ms) so that its zones are in ENCODERS
from collections.abc import Callable
from typing import Any

import msgpack

from remote_kernel.protocol.exceptions import loaded_class
from remote_kernel.protocol.messages import Ext

MAX_DIGITS = 4300  # Python's own default limit for int <-> str conversions
# decimal128's largest exponent: int() of a Decimal past it computes a huge power (4300
# digits at 10**6 took 34 s), so such a value goes by reference instead.
MAX_EXPONENT = 6144
# A Fraction's terms stay under MAX_DIGITS decimal digits, so it can be printed (str() of
# an int of more digits raises).
MAX_INT_BYTES = 1780
MAX_PATH_BYTES = 1 << 16
MAX_NAME = 1024
MAX_DAYS = 999_999_999  # timedelta's own bound
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_ZONE_KEY = re.compile(r"[A-Za-z0-9_+\-]{1,64}(/[A-Za-z0-9_+\-]{1,64}){0,4}")
_DIGITS = re.compile(r"[0-9]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DAY = datetime.timedelta(days=1)
_LOCAL_FLAVOUR = "windows" if os.name == "nt" else "posix"


class CannotEncode(TypeError):
    """This value cannot travel by value faithfully (it goes by reference)."""


class NotHere(TypeError):
    """A well-formed value that this side cannot rebuild (an unknown zone or enum)."""


# -- encoding ------------------------------------------------------------------------------


def _pack(fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def _tz_fields(tz: Any) -> Any:
    return None if tz is None else _zone_fields(tz)


def _zone_fields(tz: Any) -> tuple:
    """The one encoding of a time zone: a datetime's or a time's, and a zone on its own."""
    if type(tz) is datetime.timezone:
        args = tz.__getinitargs__()  # (offset,) or (offset, name): the name only if given
        offset = args[0]
        micros = (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
        name = args[1] if len(args) > 1 else None
        if name is not None and not _sendable_name(name):
            raise CannotEncode(f"its time zone name is longer than {MAX_NAME} characters "
                               f"or not valid UTF-8")
        return ("offset", micros, name)
    if type(tz) is zoneinfo.ZoneInfo:
        fields = _ZONES_SEEN.get(tz, _UNSEEN)
        if fields is _UNSEEN:
            if len(_ZONES_SEEN) >= 256:
                _ZONES_SEEN.clear()
            fields = _ZONES_SEEN[tz] = _zoneinfo_fields(tz)
        if fields is None:
            raise CannotEncode(f"its zoneinfo zone {tz.key!r} was made from a file or has "
                               f"a key that a peer would refuse")
        return fields
    raise CannotEncode(f"its time zone {type(tz).__module__}.{type(tz).__qualname__} is "
                       f"not a datetime.timezone or a zoneinfo zone with a key")


# zone -> its fields, or None: a datetime in a zone is encoded often, and the checks below
# cost microseconds (reading zoneinfo.TZPATH alone goes through a module __getattr__).
_ZONES_SEEN: dict[Any, tuple | None] = {}
_UNSEEN = object()


def _zoneinfo_fields(zone: Any) -> tuple | None:
    """``["zone", key]``, or None when the zone cannot travel by its key: made from a file,
    or a key that this side would refuse from a peer (the peer checks its own database)."""
    key = zone.key
    if type(key) is str and _ZONE_KEY.fullmatch(key) is not None and _by_key(zone) \
            and _zone_source(key, zoneinfo.TZPATH) != "outside":
        return ("zone", key)
    return None


def _sendable_name(name: str) -> bool:
    if len(name) > MAX_NAME:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _by_key(zone: Any) -> bool:
    """Whether ``zone`` is what its key says: ZoneInfo's pickling refuses a zone that
    ``from_file`` read (key or not); a cached or ``no_cache`` zone pickles by key."""
    try:
        zone.__reduce__()
    except Exception:  # pickle.PicklingError
        return False
    return True


@functools.lru_cache(maxsize=256)
def _zone_source(key: str, tzpath: tuple[str, ...]) -> str:
    """Where ``ZoneInfo(key)`` would read ``key`` (a well-formed key): ``"file"`` under
    ``tzpath`` (the first that has it, as zoneinfo looks), ``"outside"`` when that file
    resolves out of its directory (a link), or ``"none"`` (the tzdata package, if any).
    Cached: a peer's datetimes in one zone decode it often; the database does not move."""
    for root in tzpath:
        path = os.path.join(root, key)
        if os.path.isfile(path):
            real_root = os.path.realpath(root)
            inside = os.path.commonpath([real_root, os.path.realpath(path)]) == real_root
            return "file" if inside else "outside"
    return "none"


def _tzinfo(value: datetime.tzinfo) -> bytes:
    return _pack(_zone_fields(value))


def _datetime(value: datetime.datetime) -> bytes:
    return _pack((value.year, value.month, value.day, value.hour, value.minute, value.second,
                  value.microsecond, value.fold, _tz_fields(value.tzinfo)))


def _date(value: datetime.date) -> bytes:
    return _pack((value.year, value.month, value.day))


def _time(value: datetime.time) -> bytes:
    return _pack((value.hour, value.minute, value.second, value.microsecond, value.fold,
                  _tz_fields(value.tzinfo)))


def _timedelta(value: datetime.timedelta) -> bytes:
    return _pack((value.days, value.seconds, value.microseconds))


def _decimal(value: decimal.Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if len(digits) > MAX_DIGITS or type(exponent) is int and abs(exponent) > MAX_EXPONENT:
        raise CannotEncode(f"it has more than {MAX_DIGITS} digits or an exponent beyond "
                           f"±{MAX_EXPONENT}")
    return _pack((sign, "".join(map(str, digits)), exponent))


def _big_int(value: int) -> int | bytes:
    if _INT64_MIN <= value <= _UINT64_MAX:
        return value
    data = value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)
    if len(data) > MAX_INT_BYTES:
        raise CannotEncode(f"its integers are larger than {MAX_INT_BYTES} bytes")
    return data


def _fraction(value: fractions.Fraction) -> bytes:
    return _pack((_big_int(value.numerator), _big_int(value.denominator)))


def _uuid(value: uuid.UUID) -> bytes:
    return value.bytes


def _path(value: pathlib.PurePath) -> bytes:
    flavour, concrete = _PATH_KINDS[type(value)]
    text = str(value).encode("utf-8", "surrogatepass")
    if len(text) > MAX_PATH_BYTES:
        raise CannotEncode(f"it is longer than {MAX_PATH_BYTES} bytes")
    return _pack((flavour, concrete, text))


_PATH_KINDS: dict[type, tuple[str, bool]] = {
    pathlib.PurePosixPath: ("posix", False), pathlib.PureWindowsPath: ("windows", False),
    pathlib.PosixPath: ("posix", True), pathlib.WindowsPath: ("windows", True),
}

# Exact type -> (ext code, encoder). Encoders raise CannotEncode for what they refuse.
ENCODERS: dict[type, tuple[int, Callable[[Any], bytes]]] = {
    datetime.datetime: (int(Ext.DATETIME), _datetime),
    datetime.date: (int(Ext.DATE), _date),
    datetime.time: (int(Ext.TIME), _time),
    datetime.timedelta: (int(Ext.TIMEDELTA), _timedelta),
    decimal.Decimal: (int(Ext.DECIMAL), _decimal),
    fractions.Fraction: (int(Ext.FRACTION), _fraction),
    uuid.UUID: (int(Ext.UUID), _uuid),
    **{cls: (int(Ext.PATH), _path) for cls in _PATH_KINDS},
    datetime.timezone: (int(Ext.TZINFO), _tzinfo),
    zoneinfo.ZoneInfo: (int(Ext.TZINFO), _tzinfo),
}


def is_enum_member(obj: Any) -> bool:
    return enum.Enum in type(obj).__mro__


def encode_enum(member: enum.Enum) -> bytes:
    """An enum member as [module, qualname, name]; a flag combining members (no single
    name) cannot be looked up by name: CannotEncode."""
    cls = type(member)
    name = member._name_
    if type(name) is not str or name not in cls.__members__:
        raise CannotEncode(f"{cls.__qualname__} member {member!r} has no single name")
    return _pack((cls.__module__, cls.__qualname__, name))


# -- decoding ------------------------------------------------------------------------------


def _fields(data: bytes, count: int) -> tuple:
    """The fields of a value: plain msgpack data (an ext value inside is an ExtType, which
    no check below accepts)."""
    fields = msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=True)
    if type(fields) is not tuple or len(fields) != count:
        raise ValueError(f"expected {count} fields")
    return fields


def _ints(*values: Any, low: int = 0, high: int = 1_000_000_000) -> None:
    for value in values:
        if type(value) is not int or not low <= value <= high:
            raise ValueError("a field is not an integer in range")


def _tz_from(fields: Any) -> datetime.tzinfo | None:
    return None if fields is None else _zone_from(fields)


def _zone_from(fields: Any) -> datetime.tzinfo:
    """A time zone from its fields (``_zone_fields``)."""
    if type(fields) is not tuple or not fields:
        raise ValueError("malformed time zone")
    if fields[0] == "offset" and len(fields) == 3:
        _, micros, name = fields
        _ints(micros, low=-86_400_000_000 + 1, high=86_400_000_000 - 1)
        offset = datetime.timedelta(microseconds=micros)
        if name is None:
            return datetime.timezone(offset)
        if type(name) is not str or len(name) > MAX_NAME:
            raise ValueError("malformed time zone name")
        return datetime.timezone(offset, name)
    if fields[0] == "zone" and len(fields) == 2:
        return _zone(fields[1])
    raise ValueError("malformed time zone")


def _zone(key: Any) -> datetime.tzinfo:
    """The zoneinfo zone ``key``, if this side's time zone database has it."""
    if type(key) is not str or _ZONE_KEY.fullmatch(key) is None:
        raise ValueError("malformed time zone key")
    source = _zone_source(key, zoneinfo.TZPATH)
    if source == "outside":
        raise ValueError(f"time zone key {key!r} leads out of the time zone database")
    if source == "none" and "tzdata" not in sys.modules:
        raise NotHere(f"the peer sent the time zone {key!r}, which this side does not know "
                      f"(no such file under zoneinfo.TZPATH; pip install tzdata, then "
                      f"import tzdata)")
    try:
        return zoneinfo.ZoneInfo(key)
    except zoneinfo.ZoneInfoNotFoundError:
        raise NotHere(f"the peer sent the time zone {key!r}, which this side does not know "
                      f"(pip install tzdata, then import tzdata)") from None


def _tzinfo_from(data: bytes) -> datetime.tzinfo:
    # Nil (a datetime's "naive") is no zone on its own: not a tuple, so malformed.
    return _zone_from(msgpack.unpackb(data, use_list=False, raw=False, strict_map_key=True))


def _datetime_from(data: bytes) -> datetime.datetime:
    year, month, day, hour, minute, second, micro, fold, tz = _fields(data, 9)
    _ints(year, month, day, hour, minute, second, micro, fold)
    return datetime.datetime(year, month, day, hour, minute, second, micro, _tz_from(tz),
                             fold=fold)


def _date_from(data: bytes) -> datetime.date:
    year, month, day = _fields(data, 3)
    _ints(year, month, day)
    return datetime.date(year, month, day)


def _time_from(data: bytes) -> datetime.time:
    hour, minute, second, micro, fold, tz = _fields(data, 6)
    _ints(hour, minute, second, micro, fold)
    return datetime.time(hour, minute, second, micro, _tz_from(tz), fold=fold)


def _timedelta_from(data: bytes) -> datetime.timedelta:
    days, seconds, micros = _fields(data, 3)
    _ints(days, low=-MAX_DAYS, high=MAX_DAYS)
    _ints(seconds, high=86_399)
    _ints(micros, high=999_999)
    return datetime.timedelta(days, seconds, micros)


def _decimal_from(data: bytes) -> decimal.Decimal:
    sign, digits, exponent = _fields(data, 3)
    _ints(sign, high=1)
    if type(digits) is not str or len(digits) > MAX_DIGITS or not _DIGITS.fullmatch(digits):
        raise ValueError("malformed decimal digits")
    if type(exponent) is int:
        _ints(exponent, low=-MAX_EXPONENT, high=MAX_EXPONENT)
    elif exponent not in ("n", "N", "F"):
        raise ValueError("malformed decimal exponent")
    return decimal.Decimal((sign, tuple(ord(c) - 48 for c in digits), exponent))


def _int_from(field: Any) -> int:
    if type(field) is int:
        return field
    if type(field) is bytes and 0 < len(field) <= MAX_INT_BYTES:
        return int.from_bytes(field, "big", signed=True)
    raise ValueError("malformed integer")


def _fraction_from(data: bytes) -> fractions.Fraction:
    numerator, denominator = (_int_from(field) for field in _fields(data, 2))
    if denominator <= 0:
        raise ValueError("a fraction's denominator is positive")
    return fractions.Fraction(numerator, denominator)


def _uuid_from(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise ValueError("a UUID is 16 bytes")
    return uuid.UUID(bytes=bytes(data))


# A concrete path is concrete here only when its flavour is this system's.
_PATH_CLASSES: dict[tuple[str, bool], type] = {
    ("posix", False): pathlib.PurePosixPath, ("windows", False): pathlib.PureWindowsPath,
    ("posix", True): pathlib.PurePosixPath, ("windows", True): pathlib.PureWindowsPath,
}
_PATH_CLASSES[_LOCAL_FLAVOUR, True] = pathlib.WindowsPath if os.name == "nt" \
    else pathlib.PosixPath


def _path_from(data: bytes) -> pathlib.PurePath:
    flavour, concrete, text = _fields(data, 3)
    if type(concrete) is not bool or type(text) is not bytes or len(text) > MAX_PATH_BYTES:
        raise ValueError("malformed path")
    cls = _PATH_CLASSES.get((flavour, concrete)) if type(flavour) is str else None
    if cls is None:
        raise ValueError("unknown path flavour")
    return cls(text.decode("utf-8", "surrogatepass"))


def _enum_from(data: bytes) -> enum.Enum:
    module, qualname, name = _fields(data, 3)
    if not all(type(item) is str and len(item) <= MAX_NAME for item in (module, qualname,
                                                                         name)) \
            or _NAME.fullmatch(module) is None or _NAME.fullmatch(qualname) is None:
        raise ValueError("malformed enum member")
    cls = _known_enum(module, qualname)
    what = f"{module}.{qualname}"
    if cls is None:
        raise NotHere(f"cannot copy a member of the enum {what} by value: that enum is not "
                      f"loaded here (an enum is looked up in the modules already imported, "
                      f"never imported for a peer)")
    members = type.__getattribute__(cls, "__dict__").get("_member_map_")
    member = members.get(name) if type(members) is dict else None
    if not isinstance(member, cls):
        raise NotHere(f"cannot copy {what}.{name} by value: the enum {what} here has no "
                      f"member {name!r}")
    return member


def _known_enum(module: str, qualname: str) -> type | None:
    """The enum class ``module.qualname`` if this process already has it (found as
    exception classes are: exceptions.loaded_class)."""
    found = loaded_class(module, qualname)
    if found is not None and enum.Enum in type.__getattribute__(found, "__mro__"):
        return found
    return None


DECODERS: dict[int, Callable[[bytes], Any]] = {
    int(Ext.DATETIME): _datetime_from,
    int(Ext.DATE): _date_from,
    int(Ext.TIME): _time_from,
    int(Ext.TIMEDELTA): _timedelta_from,
    int(Ext.DECIMAL): _decimal_from,
    int(Ext.FRACTION): _fraction_from,
    int(Ext.UUID): _uuid_from,
    int(Ext.PATH): _path_from,
    int(Ext.ENUM): _enum_from,
    int(Ext.TZINFO): _tzinfo_from,
}
CODES = frozenset(DECODERS)


def decode(code: int, data: bytes) -> Any:
    """The value of a std ext value. ``NotHere`` for a well-formed value this side cannot
    rebuild; any other exception means it is malformed."""
    return DECODERS[code](data)


__all__ = ["CODES", "CannotEncode", "DECODERS", "ENCODERS", "NotHere", "decode",
           "encode_enum", "is_enum_member"]

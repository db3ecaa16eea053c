"""pandas DataFrame, Series and Index by value: the PANDAS layout of ``values.py`` (which
describes it), built from numpy columns (``ndarrays.py``)."""

from __future__ import annotations

import datetime
import re
import sys
from typing import Any

from remote_kernel.protocol.ndarrays import (
    MAX_NDIM,
    MissingLibrary,
    Put,
    Take,
    array_fields,
    array_from,
    is_numpy,
    numpy_module,
    qualname,
)

MAX_LABEL_DEPTH = 8
MAX_INDEX_DEPTH = 3  # a level of a MultiIndex, or the categories of a category, are nested

_TZ_NAME = re.compile(r"[A-Za-z0-9_+\-]{1,64}(/[A-Za-z0-9_+\-]{1,64}){0,4}")
_FREQ = re.compile(r"-?\d{0,9}[A-Za-z][A-Za-z0-9\-]{0,31}")
_MASKED_DTYPES = frozenset({"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                            "UInt64", "Float32", "Float64", "boolean"})
_STRING_STORAGES = frozenset({"python", "pyarrow"})


def is_pandas(obj: Any) -> bool:
    """True for pandas DataFrame, Series and Index objects (pandas' own classes)."""
    module = type(obj).__module__
    if not module.startswith("pandas") or "pandas" not in sys.modules:
        return False
    import pandas

    return isinstance(obj, (pandas.DataFrame, pandas.Series, pandas.Index))


def _label(value: Any, what: str, depth: int = 0) -> Any:
    """A name or label as plain data; numpy scalars become their Python value."""
    if value is None or type(value) in (bool, str, float):
        return value
    if type(value) is int:
        if -(2**63) <= value < 2**64:
            return value
    elif type(value) is tuple and depth < MAX_LABEL_DEPTH:
        return tuple(_label(item, what, depth + 1) for item in value)
    elif is_numpy(value) and getattr(value, "ndim", 1) == 0:
        item = value.item()
        if type(item) in (bool, int, float, str):
            return _label(item, what, depth)
    raise TypeError(f"cannot copy {what} by value: its name {value!r} is a "
                    f"{type(value).__name__}, not a string, number or tuple")


def _checked_label(value: Any, depth: int = 0) -> Any:
    if value is None or type(value) in (bool, str, float, int):
        return value
    if type(value) is tuple and depth < MAX_LABEL_DEPTH:
        for item in value:
            _checked_label(item, depth + 1)
        return value
    raise ValueError("malformed name")


def encode_pandas(obj: Any, put: Put) -> tuple:
    import pandas

    if type(obj) is pandas.DataFrame:
        columns = tuple(_encode_values(obj.iloc[:, i], put, f"column {label!r}")
                        for i, label in enumerate(obj.columns))
        return ("frame", columns, _encode_index(obj.columns, put, "the columns"),
                _encode_index(obj.index, put, "the index"))
    if type(obj) is pandas.Series:
        return ("series", _encode_values(obj, put, f"series {obj.name!r}"),
                _encode_index(obj.index, put, "the index"), _label(obj.name, "the series"))
    if isinstance(obj, pandas.Index) and type(obj).__module__.startswith("pandas"):
        return _encode_index(obj, put, "the index")
    raise TypeError(f"cannot copy a {qualname(type(obj))} by value (a pandas subclass)")


def _encode_index(index: Any, put: Put, what: str) -> tuple:
    import pandas

    if type(index) is pandas.MultiIndex:
        return ("multi",
                tuple(_encode_index(level, put, f"{what} level {i}")
                      for i, level in enumerate(index.levels)),
                tuple(array_fields(_as_numpy(codes), put, False) for codes in index.codes),
                tuple(_label(name, what) for name in index.names))
    if type(index) is pandas.RangeIndex:
        return ("range", int(index.start), int(index.stop), int(index.step),
                _label(index.name, what))
    freq = None
    if isinstance(index, (pandas.DatetimeIndex, pandas.TimedeltaIndex)) and index.freq:
        freq = index.freqstr
    return ("index", _encode_values(index, put, what), _label(index.name, what), freq)


def _as_numpy(values: Any) -> Any:
    import numpy

    return numpy.asarray(values)


def _encode_values(values: Any, put: Put, what: str) -> tuple:
    """One column (a Series or an Index) by its dtype."""
    import numpy
    import pandas

    dtype = values.dtype
    if isinstance(dtype, numpy.dtype):
        if dtype.kind == "O":
            return _encode_strings(values, put, what, "object")
        return ("numpy", array_fields(values.to_numpy(copy=False), put, False, what))
    if isinstance(dtype, pandas.CategoricalDtype):
        categorical = values.array
        return ("category", array_fields(numpy.asarray(categorical.codes), put, False, what),
                _encode_index(dtype.categories, put, f"the categories of {what}"),
                bool(dtype.ordered))
    if isinstance(dtype, pandas.DatetimeTZDtype):
        utc = pandas.DatetimeIndex(values).tz_convert(None)
        return ("datetimetz", array_fields(utc.to_numpy(), put, False, what),
                _encode_tz(dtype.tz, what))
    if isinstance(dtype, pandas.StringDtype):
        na = "nan" if _is_nan(dtype.na_value) else "NA"
        return _encode_strings(values, put, what, ("string", str(dtype.storage), na))
    if dtype.name in _MASKED_DTYPES and hasattr(dtype, "numpy_dtype"):
        array = values.array
        mask = numpy.asarray(array.isna(), dtype=bool)
        zero = False if dtype.name == "boolean" else 0
        data = array.to_numpy(dtype=dtype.numpy_dtype, na_value=zero)
        return ("masked", dtype.name, array_fields(data, put, False, what),
                array_fields(mask, put, False, what))
    raise TypeError(f"cannot copy {what} by value: its dtype {dtype} has no by-value layout "
                    f"(numbers, bool, datetime, timedelta, category, strings and nullable "
                    f"numbers do)")


def _is_nan(value: Any) -> bool:
    return type(value) is float and value != value


def _encode_strings(values: Any, put: Put, what: str, dtype: Any) -> tuple:
    """Strings as UTF-8 bytes, int64 offsets and a missing-value code per item (0: a
    string, 1: None, 2: NaN, 3: pandas.NA)."""
    import numpy
    import pandas

    items = values.to_numpy(dtype=object)
    missing = numpy.zeros(len(items), dtype=numpy.uint8)
    offsets = numpy.zeros(len(items) + 1, dtype=numpy.int64)
    chunks: list[bytes] = []
    position = 0
    for i, item in enumerate(items):
        if type(item) is str:
            data = item.encode("utf-8", "surrogatepass")
            chunks.append(data)
            position += len(data)
        elif item is None:
            missing[i] = 1
        elif _is_nan(item):
            missing[i] = 2
        elif item is pandas.NA:
            missing[i] = 3
        else:
            raise TypeError(f"cannot copy {what} by value: it has dtype object and holds a "
                            f"{type(item).__name__} ({_short(item)}); only strings and "
                            f"missing values travel in an object column")
        offsets[i + 1] = position
    utf8 = numpy.frombuffer(b"".join(chunks), dtype=numpy.uint8)
    return ("strings", dtype, array_fields(utf8, put, False, what),
            array_fields(offsets, put, False, what), array_fields(missing, put, False, what))


def _short(item: Any) -> str:
    try:
        text = repr(item)
    except Exception:
        text = "?"
    return text if len(text) <= 40 else text[:37] + "..."


def _encode_tz(tz: Any, what: str) -> tuple:
    if tz is datetime.timezone.utc:
        return ("utc",)
    if isinstance(tz, datetime.timezone):
        offset = tz.utcoffset(None)
        return ("offset", int(offset.total_seconds()))
    key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo
    if type(tz).__module__ == "zoneinfo" and isinstance(key, str):
        return ("zoneinfo", key)
    zone = getattr(tz, "zone", None)  # pytz
    if type(tz).__module__.startswith("pytz") and isinstance(zone, str):
        # By its own kind: pandas 2 (whose named zones are pytz's) counts a pytz zone and
        # the zoneinfo zone of the same name as different dtypes.
        return ("pytz", zone) if zone != "UTC" else ("pytz-utc",)
    raise TypeError(f"cannot copy {what} by value: its time zone {tz!r} is not a named "
                    f"(zoneinfo/pytz) zone or a fixed offset")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingLibrary("the peer sent a pandas object; install pandas here to copy it "
                             "(pip install pandas)") from None
    return pandas


def pandas_from(fields: tuple, take: Take) -> Any:
    pandas = _pandas()
    if not fields or type(fields[0]) is not str:
        raise ValueError("malformed pandas value")
    kind = fields[0]
    if kind == "frame" and len(fields) == 4:
        _, columns, columns_index, index_fields = fields
        if type(columns) is not tuple:
            raise ValueError("malformed frame")
        index = _index_from(index_fields, take)
        labels = _index_from(columns_index, take)
        if len(labels) != len(columns):
            raise ValueError("the frame's columns do not match its labels")
        series = [pandas.Series(values, index=index, dtype=values.dtype, copy=False)
                  for values in (_values_from(column, take, len(index)) for column in columns)]
        frame = pandas.DataFrame(dict(enumerate(series)), index=index, copy=False) \
            if series else pandas.DataFrame(index=index)
        frame.columns = labels
        return frame
    if kind == "series" and len(fields) == 4:
        _, values_fields, index_fields, name = fields
        index = _index_from(index_fields, take)
        values = _values_from(values_fields, take, len(index))
        return pandas.Series(values, index=index, dtype=values.dtype,
                             name=_checked_label(name), copy=False)
    return _index_from(fields, take)


def _index_from(fields: Any, take: Take, depth: int = 0) -> Any:
    pandas = _pandas()
    if type(fields) is not tuple or not fields or depth > MAX_INDEX_DEPTH:
        raise ValueError("malformed index (or nested too deeply)")
    kind = fields[0]
    if kind == "range" and len(fields) == 5:
        _, start, stop, step, name = fields
        if not all(type(n) is int and -(2**63) <= n < 2**63 for n in (start, stop, step)) \
                or step == 0:
            raise ValueError("malformed range index")
        return pandas.RangeIndex(start, stop, step, name=_checked_label(name))
    if kind == "index" and len(fields) == 4:
        _, values_fields, name, freq = fields
        values = _values_from(values_fields, take, depth=depth)
        index = pandas.Index(values, dtype=values.dtype, name=_checked_label(name), copy=False)
        if freq is not None:
            if type(freq) is not str or _FREQ.fullmatch(freq) is None:
                raise ValueError("malformed index frequency")
            if isinstance(index, pandas.DatetimeIndex):
                index = pandas.DatetimeIndex(index, freq=freq)
            elif isinstance(index, pandas.TimedeltaIndex):
                index = pandas.TimedeltaIndex(index, freq=freq)
        return index
    if kind == "multi" and len(fields) == 4:
        _, levels, codes, names = fields
        if type(levels) is not tuple or type(codes) is not tuple or type(names) is not tuple \
                or not 0 < len(levels) == len(codes) == len(names) <= MAX_NDIM:
            raise ValueError("malformed multi-index")
        return pandas.MultiIndex(
            levels=[_index_from(level, take, depth + 1) for level in levels],
            codes=[_int_array(code, take) for code in codes],
            names=[_checked_label(name) for name in names], verify_integrity=True)
    raise ValueError(f"malformed index of kind {str(kind)[:20]!r}")


def _int_array(fields: Any, take: Take) -> Any:
    if type(fields) is not tuple:
        raise ValueError("malformed integer array")
    array = array_from(fields, take, scalar_ok=False)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError("expected a 1-d integer array")
    return array


def _values_from(fields: Any, take: Take, length: int | None = None, depth: int = 0) -> Any:
    """One column: a numpy array or a pandas extension array."""
    numpy = numpy_module()
    pandas = _pandas()
    if type(fields) is not tuple or not fields:
        raise ValueError("malformed column")
    kind = fields[0]
    if kind == "numpy" and len(fields) == 2 and type(fields[1]) is tuple:
        values = array_from(fields[1], take, scalar_ok=False)
        if values.ndim != 1 or values.dtype.fields is not None:
            raise ValueError("a column is a 1-d array of a simple dtype")
    elif kind == "datetimetz" and len(fields) == 3 and type(fields[1]) is tuple:
        utc = array_from(fields[1], take, scalar_ok=False)
        if utc.ndim != 1 or utc.dtype.kind != "M":
            raise ValueError("malformed datetime column")
        values = pandas.DatetimeIndex(utc).tz_localize("UTC").tz_convert(_tz_from(fields[2]))
        values = values.array
    elif kind == "category" and len(fields) == 4 and type(fields[1]) is tuple:
        _, codes_fields, categories_fields, ordered = fields
        if type(ordered) is not bool:
            raise ValueError("malformed categorical column")
        codes = _int_array(codes_fields, take)
        categories = _index_from(categories_fields, take, depth + 1)
        values = pandas.Categorical.from_codes(
            codes, dtype=pandas.CategoricalDtype(categories, ordered=ordered))
    elif kind == "masked" and len(fields) == 4 and fields[1] in _MASKED_DTYPES \
            and type(fields[2]) is tuple and type(fields[3]) is tuple:
        dtype = pandas.api.types.pandas_dtype(fields[1])
        data = array_from(fields[2], take, scalar_ok=False)
        mask = array_from(fields[3], take, scalar_ok=False)
        if data.ndim != 1 or data.dtype != dtype.numpy_dtype or mask.dtype != numpy.bool_ \
                or mask.shape != data.shape:
            raise ValueError("malformed nullable column")
        values = dtype.construct_array_type()(data, mask)
    elif kind == "strings" and len(fields) == 5:
        values = _strings_from(fields, take)
    else:
        raise ValueError(f"malformed column of kind {str(kind)[:20]!r}")
    if length is not None and len(values) != length:
        raise ValueError("a column's length does not match the index")
    return values


def _strings_from(fields: tuple, take: Take) -> Any:
    numpy = numpy_module()
    pandas = _pandas()
    _, dtype_fields, utf8_fields, offsets_fields, missing_fields = fields
    if not all(type(f) is tuple for f in (utf8_fields, offsets_fields, missing_fields)):
        raise ValueError("malformed string column")
    utf8 = array_from(utf8_fields, take, scalar_ok=False)
    offsets = array_from(offsets_fields, take, scalar_ok=False)
    missing = array_from(missing_fields, take, scalar_ok=False)
    count = len(missing)
    if utf8.dtype != numpy.uint8 or offsets.dtype != numpy.int64 \
            or missing.dtype != numpy.uint8 or utf8.ndim != 1 or offsets.shape != (count + 1,) \
            or missing.ndim != 1 or (count and int(missing.max()) > 3):
        raise ValueError("malformed string column")
    steps = numpy.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != len(utf8) or (count and int(steps.min()) < 0) \
            or numpy.any(steps[missing != 0]):
        raise ValueError("malformed string offsets")
    data = utf8.tobytes()
    bounds = offsets.tolist()
    if dtype_fields == "object":
        na = {1: None, 2: float("nan"), 3: pandas.NA}
        items = [data[bounds[i]:bounds[i + 1]].decode("utf-8", "surrogatepass") if code == 0
                 else na[code] for i, code in enumerate(missing.tolist())]
        values = numpy.empty(count, dtype=object)
        values[:] = items
        return values
    if type(dtype_fields) is not tuple or len(dtype_fields) != 3 \
            or dtype_fields[0] != "string" or dtype_fields[1] not in _STRING_STORAGES \
            or dtype_fields[2] not in ("nan", "NA"):
        raise ValueError("malformed string dtype")
    items = [data[bounds[i]:bounds[i + 1]].decode("utf-8", "surrogatepass") if code == 0
             else None for i, code in enumerate(missing.tolist())]
    return pandas.array(items, dtype=_string_dtype(dtype_fields[1], dtype_fields[2]))


def _string_dtype(storage: str, na: str) -> Any:
    pandas = _pandas()
    if storage == "pyarrow":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            storage = "python"  # what pandas itself chooses without pyarrow
    try:
        if na == "nan":
            return pandas.StringDtype(storage=storage, na_value=float("nan"))
        return pandas.StringDtype(storage=storage)
    except TypeError:
        raise MissingLibrary(f"the peer sent a pandas str column; pandas {pandas.__version__} "
                             f"here is too old for it (pip install -U pandas)") from None


def _pytz_zone(name: str) -> Any:
    """The pytz zone ``name`` where pytz is installed (pandas 2 requires it), else None
    (the zoneinfo zone of that name then stands for it)."""
    try:
        import pytz
    except ImportError:
        return None
    try:
        return pytz.timezone(name)
    except pytz.UnknownTimeZoneError:
        return None


def _tz_from(fields: Any) -> Any:
    if fields == ("utc",):
        return datetime.timezone.utc
    if fields == ("pytz-utc",):
        try:
            import pytz
        except ImportError:
            return datetime.timezone.utc
        return pytz.utc
    if type(fields) is tuple and len(fields) == 2:
        kind, value = fields
        if kind == "offset" and type(value) is int and abs(value) < 86400:
            return datetime.timezone(datetime.timedelta(seconds=value))
        if kind in ("zoneinfo", "pytz") and type(value) is str \
                and _TZ_NAME.fullmatch(value) and ".." not in value:
            if kind == "pytz":
                zone = _pytz_zone(value)
                if zone is not None:
                    return zone
            import zoneinfo

            try:
                return zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise MissingLibrary(f"the peer sent datetimes in time zone {value!r}, which "
                                     f"this side does not know (pip install tzdata)") from None
    raise ValueError("malformed time zone")

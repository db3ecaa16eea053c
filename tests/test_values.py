"""numpy and pandas values by value, both ways, through real server processes: every
non-object dtype, masks, layouts, DataFrames; refusals; numpy.asarray of a netref."""

from __future__ import annotations

import datetime
import gc
import time
from typing import Any

import pytest

import remote_kernel as rk

numpy = pytest.importorskip("numpy")
pandas = pytest.importorskip("pandas")

SETUP = """
import datetime
import numpy as np
import pandas as pd
masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0], fill_value=-7)
stamps = np.array(['2024-01-01T12:00', 'NaT', '1969-12-31T23:59'], dtype='M8[ns]')
days = np.array(['2024-01-01', '2024-02-29'], dtype='M8[D]')
spans = np.array([1, -2, 3], dtype='m8[25s]')
record = np.dtype([('id', '<u2'), ('pos', '>f8', (2,)), ('name', 'U4'),
                   ('inner', [('flag', '?'), ('raw', 'S3')])], align=True)
structured = np.array([(1, (1.5, -2.0), 'ab', (True, b'xyz')),
                       (2, (0.0, 9.0), 'cdef', (False, b''))], dtype=record)
offsets = np.zeros(3, dtype=np.dtype({'names': ['a', 'b'], 'formats': ['<i4', '<f8'],
                                      'offsets': [0, 8], 'itemsize': 24,
                                      'titles': ['first', None]}))
offsets['a'] = [1, 2, 3]
big_endian = np.arange(12, dtype='>i4').reshape(3, 4)
fortran = np.asfortranarray(np.arange(24, dtype='f4').reshape(2, 3, 4))
strided = np.arange(40.0).reshape(4, 10)[::2, ::3]
strings = np.array([b'ab', b'', b'xyz'], dtype='S3')
texts = np.array(['héllo', 'µ', ''], dtype='U5')
records = np.rec.array([(1, 2.5), (3, 4.5)], dtype=[('x', 'i4'), ('y', 'f8')])
objects = np.array([1, 'two', None], dtype=object)
frame = pd.DataFrame({
    'int': np.array([1, -2, 3], dtype='int32'),
    'float': [1.5, float('nan'), -0.25],
    'bool': [True, False, True],
    'string': ['alpha', None, 'γ'],
    'when': pd.to_datetime(['2024-01-01 12:00', None, '1999-12-31 00:00']),
    'when_tz': pd.date_range('2024-03-30', periods=3, freq='h', tz='Europe/Berlin'),
    'offset_tz': pd.date_range('2024-01-01', periods=3,
                               tz=datetime.timezone(datetime.timedelta(hours=-5))),
    'category': pd.Categorical(['low', 'high', 'low'], categories=['low', 'high'],
                               ordered=True),
    'nullable': pd.array([1, None, 3], dtype='Int64'),
}, index=pd.Index([10, 20, 30], name='run'))
frame['label'] = pd.Series(['a', None, 'c'], dtype=object, index=frame.index)
series = pd.Series([0.5, 1.5, 2.5], index=pd.date_range('2024-01-01', periods=3, freq='D',
                                                         name='day'), name='volts')
index = pd.Index(['x', 'y', 'z'], name='axis')
multi = pd.MultiIndex.from_product([['a', 'b'], [1, 2]], names=['letter', 'number'])
bad_frame = pd.DataFrame({'ok': [1, 2], 'mixed': [1, 'two']})
"""


@pytest.fixture
def lab(classic: rk.Connection) -> rk.Connection:
    classic.execute(SETUP)
    return classic


def _remote(conn: rk.Connection, name: str) -> Any:
    return conn.namespace[name]


def _same_array(local: Any, original: Any) -> None:
    assert type(local) is type(original)
    assert local.dtype == original.dtype and local.shape == original.shape
    assert local.tobytes() == original.tobytes()


def test_masked_arrays_keep_mask_and_fill_value(lab: rk.Connection) -> None:
    local = rk.obtain(_remote(lab, "masked"))
    assert type(local) is numpy.ma.MaskedArray
    assert local.mask.tolist() == [False, True, False] and local.fill_value == -7
    assert local.sum() == lab.eval("int(masked.sum())") == 4
    local[0] = 100
    assert lab.eval("masked[0]") == 1  # a copy, not a view of the remote data
    sent = numpy.ma.masked_array([[1.5, 2.5], [3.5, 4.5]], mask=[[1, 0], [0, 1]],
                                 fill_value=0.25, hard_mask=True)
    remote = rk.deliver(lab, sent)
    lab.namespace["sent"] = remote
    assert lab.eval("type(sent).__name__, sent.mask.tolist(), float(sent.fill_value), "
                    "bool(sent.hardmask), float(sent.sum())") == \
        ("MaskedArray", [[True, False], [False, True]], 0.25, True, 6.0)
    back = rk.obtain(remote)
    assert back.mask.tolist() == sent.mask.tolist() and back.hardmask
    nomask = rk.obtain(lab.eval("np.ma.masked_array([1.0, 2.0])"))
    assert nomask.mask is numpy.ma.nomask
    assert rk.obtain(lab.eval("np.ma.masked")) is numpy.ma.masked
    structured = rk.obtain(lab.eval("np.ma.masked_array(structured, mask=[(1, (0, 0), 0, "
                                    "(0, 1)), (0, (1, 0), 0, (0, 0))])"))
    assert structured.mask[0]["id"] and structured.mask[0]["inner"]["raw"]
    assert not structured.mask[1]["id"]


@pytest.mark.parametrize("name", ["stamps", "days", "spans", "structured", "offsets",
                                  "big_endian", "fortran", "strided", "strings", "texts",
                                  "records"])
def test_arrays_round_trip_both_ways(lab: rk.Connection, name: str) -> None:
    original = lab.namespace[name]
    local = rk.obtain(original)
    expected = lab.eval(f"({name}.dtype.descr, {name}.shape, {name}.tobytes(order='A'))")
    assert (local.dtype.descr, local.shape, local.tobytes(order="A")) == \
        (list(expected[0]), expected[1], expected[2])
    assert local.flags.writeable
    assert local.flags.f_contiguous == lab.eval(f"{name}.flags.f_contiguous")
    lab.namespace["back"] = rk.deliver(lab, local)
    assert lab.eval(f"type(back) is type({name}) and back.dtype == {name}.dtype and "
                    f"back.shape == {name}.shape and "
                    f"back.tobytes(order='A') == {name}.tobytes(order='A') and "
                    f"back.flags.f_contiguous == {name}.flags.f_contiguous")


def test_details_of_the_dtypes_survive(lab: rk.Connection) -> None:
    stamps = rk.obtain(_remote(lab, "stamps"))
    assert str(stamps.dtype) == "datetime64[ns]" and numpy.isnat(stamps[1])
    assert str(rk.obtain(_remote(lab, "spans")).dtype) == "timedelta64[25s]"
    structured = rk.obtain(_remote(lab, "structured"))
    assert structured.dtype.isalignedstruct and structured["pos"].dtype.byteorder == ">"
    assert structured[1]["name"] == "cdef" and structured[0]["inner"]["raw"] == b"xyz"
    offsets = rk.obtain(_remote(lab, "offsets"))
    assert offsets.dtype.itemsize == 24 and offsets["first"].tolist() == [1, 2, 3]
    assert rk.obtain(_remote(lab, "big_endian")).dtype.str == ">i4"
    records = rk.obtain(_remote(lab, "records"))
    assert type(records) is numpy.recarray and records.y.tolist() == [2.5, 4.5]
    assert rk.obtain(lab.eval("np.datetime64('2024-05-01T10:00', 'm')")) == \
        numpy.datetime64("2024-05-01T10:00", "m")
    assert type(rk.obtain(lab.eval("np.float32(2.5)"))) is numpy.float32


def test_object_arrays_are_refused_naming_the_dtype(lab: rk.Connection) -> None:
    with pytest.raises(TypeError, match="dtype object"):
        rk.obtain(_remote(lab, "objects"))
    with pytest.raises(TypeError, match="dtype object"):
        rk.deliver(lab, numpy.array([object()]))
    with pytest.raises(TypeError, match="numpy.matrix"):
        rk.obtain(lab.eval("np.matrix([[1, 2]])"))
    assert lab.ping() > 0  # the connection is fine


def test_a_dataframe_round_trips_equal(lab: rk.Connection) -> None:
    frame = rk.obtain(_remote(lab, "frame"))
    assert list(frame.columns) == lab.eval("list(frame.columns)")
    assert frame.index.name == "run"
    assert str(frame["when_tz"].dtype) == lab.eval("str(frame['when_tz'].dtype)")
    assert frame["label"].dtype == object and frame["label"][20] is None
    assert frame["category"].cat.ordered
    lab.namespace["frame_back"] = rk.deliver(lab, frame)
    lab.execute("pd.testing.assert_frame_equal(frame_back, frame)")
    expected = lab.eval("{name: (str(dtype), frame[name].tolist()) "
                        "for name, dtype in frame.dtypes.items()}")
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == \
        {name: dtype for name, (dtype, _) in expected.items()}
    # The test process builds the same frame itself and compares: equal, dtypes included.
    namespace: dict[str, Any] = {}
    exec(SETUP, namespace)  # noqa: S102 - our own fixture code
    pandas.testing.assert_frame_equal(frame, namespace["frame"])


def test_series_and_indexes_round_trip(lab: rk.Connection) -> None:
    namespace: dict[str, Any] = {}
    exec(SETUP, namespace)  # noqa: S102 - our own fixture code
    series = rk.obtain(_remote(lab, "series"))
    pandas.testing.assert_series_equal(series, namespace["series"])
    assert series.index.freqstr == "D"
    pandas.testing.assert_index_equal(rk.obtain(_remote(lab, "index")), namespace["index"],
                                      exact=True)
    pandas.testing.assert_index_equal(rk.obtain(_remote(lab, "multi")), namespace["multi"],
                                      exact=True)
    for name in ("series", "index", "multi"):
        lab.namespace["back"] = rk.deliver(lab, namespace[name])
        check = "assert_series_equal" if name == "series" else "assert_index_equal"
        lab.execute(f"pd.testing.{check}(back, {name})")
    wide = rk.obtain(lab.eval("pd.DataFrame(np.arange(8).reshape(4, 2), index=multi, "
                              "columns=pd.MultiIndex.from_tuples([('v', 1), ('w', 2)]))"))
    assert wide.loc[("b", 2), ("w", 2)] == 7


def test_columns_that_cannot_travel_are_named(lab: rk.Connection) -> None:
    with pytest.raises(TypeError, match="column 'mixed'"):
        rk.obtain(_remote(lab, "bad_frame"))
    with pytest.raises(TypeError, match=r"period\[M\]"):
        rk.obtain(lab.eval("pd.Series(pd.period_range('2024-01', periods=2, freq='M'))"))
    with pytest.raises(TypeError, match="column 'mixed'"):
        rk.deliver(lab, pandas.DataFrame({"mixed": [1, "two"]}))


def test_remote_cell_outputs_and_pull_keep_masks(lab: rk.Connection) -> None:
    """%remote pull and %%remote -o go through obtain; the mask comes along."""
    from remote_kernel.ipython.magics import _local_copy

    local = _local_copy(_remote(lab, "masked"))
    assert type(local) is numpy.ma.MaskedArray and local.sum() == 4


def test_numpy_asarray_of_a_netref_is_one_request(lab: rk.Connection) -> None:
    lab.execute("hundred_k = np.arange(100_000, dtype='f8')")
    remote = lab.namespace["hundred_k"]
    before = lab.stats["requests"]
    local = numpy.asarray(remote)
    assert lab.stats["requests"] - before <= 2
    assert type(local) is numpy.ndarray and local.shape == (100_000,) and local[-1] == 99_999
    before = lab.stats["requests"]
    total = numpy.array([1.0, 2.0, 3.0]) + remote[:3]  # getitem, then one OBTAIN
    assert lab.stats["requests"] - before <= 2
    assert type(total) is numpy.ndarray and total.tolist() == [1.0, 3.0, 5.0]
    assert numpy.array(remote, dtype="f4").dtype == numpy.float32
    with pytest.raises(ValueError, match="copy"):
        numpy.asarray(remote, copy=False)
    masked = numpy.asarray(_remote(lab, "masked"))  # as numpy.asarray of a local one: data
    assert type(masked) is numpy.ndarray and masked.tolist() == [1, 2, 3]
    assert numpy.asarray(lab.eval("np.float64(2.5)")) == 2.5


@pytest.mark.slow
def test_large_values_come_in_chunks_and_free_their_snapshot() -> None:
    with rk.Server(rk.ClassicService) as server:
        conn = rk.connect("127.0.0.1", server.port)
        try:
            conn.execute("import numpy as np, pandas as pd\n"
                         "wide = np.arange(3_000_000.0).reshape(1000, 3000)[:, ::2]\n"
                         "big_masked = np.ma.masked_array(np.arange(1_000_000.0), "
                         "mask=np.arange(1_000_000) % 3 == 0)\n"
                         "big_frame = pd.DataFrame({'x': np.arange(600_000.0), "
                         "'s': ['%d' % (i % 1000) for i in range(600_000)]})")
            served = server.connections[0]
            for name in ("wide", "big_masked", "big_frame"):
                before = conn.stats["requests"]
                local = rk.obtain(conn.namespace[name], progress=False)
                assert conn.stats["requests"] - before >= 3, name  # announced, then READs
                assert conn.eval(f"{name}.shape") == local.shape
                time.sleep(0.05)
                conn.ping()  # anything else the client sends goes after the release
                assert all(type(obj).__name__ != "Snapshot"
                           for obj in _table_objects(served)), name
            assert local["s"].iloc[1234] == "234"
            assert local.equals(rk.obtain(conn.namespace["big_frame"], progress=False))
            assert bool(rk.obtain(conn.namespace["big_masked"], progress=False).mask[3])
        finally:
            conn.close()


def _table_objects(conn: rk.Connection) -> list[Any]:
    gc.collect()
    return [entry[0] for entry in list(conn._table._objects.values())]


def test_a_peer_without_pandas_refuses_cleanly(start_server) -> None:
    server = start_server("--classic", name="nopandas", block=("pandas",))
    conn = server.connect()
    try:
        assert conn.eval("__import__('importlib.util').util.find_spec('numpy') is not None")
        with pytest.raises(TypeError, match="install pandas"):
            rk.deliver(conn, pandas.DataFrame({"x": [1, 2]}))
        copy = rk.deliver(conn, numpy.arange(3))  # the connection is fine; numpy travels
        assert rk.obtain(copy).tolist() == [0, 1, 2]
    finally:
        conn.close()


def test_time_zones_travel_by_name_or_offset(lab: rk.Connection) -> None:
    local = rk.obtain(lab.eval("pd.Series(pd.date_range('2024-01-01', periods=2, "
                               "tz='UTC'))"))
    assert str(local.dtype) == "datetime64[ns, UTC]" or str(local.dtype).endswith(", UTC]")
    fixed = rk.obtain(_remote(lab, "frame"))["offset_tz"]
    assert fixed.dt.tz.utcoffset(None) == datetime.timedelta(hours=-5)


def test_a_stopped_chunked_obtain_frees_its_snapshot(monkeypatch) -> None:
    """Stop (Ctrl-C) while the chunks arrive: KeyboardInterrupt here, the snapshot released
    there, the connection still usable. The bar's update is where the interrupt lands."""
    from remote_kernel.core import api

    class StoppingBar:
        def update(self, count: int) -> None:
            raise KeyboardInterrupt

        def close(self) -> None:
            pass

    monkeypatch.setattr(api, "_progress_bar", lambda total, enabled: StoppingBar())
    with rk.Server(rk.ClassicService) as server:
        conn = rk.connect("127.0.0.1", server.port)
        try:
            conn.execute("import numpy as np\nbig = np.arange(2_000_000.0)[::-1]")
            served = server.connections[0]
            with pytest.raises(KeyboardInterrupt):
                rk.obtain(conn.namespace["big"])
            assert conn.ping() > 0
            deadline = time.monotonic() + 5
            while any(type(obj).__name__ == "Snapshot" for obj in _table_objects(served)):
                assert time.monotonic() < deadline, "the snapshot was not released"
                conn.ping()
        finally:
            conn.close()

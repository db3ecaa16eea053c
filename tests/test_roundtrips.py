"""Round trips per gesture, counted on the connection (every request sent is one)."""

from __future__ import annotations

import gc

import remote_kernel as rk


def requests(conn: rk.Connection) -> int:
    return conn.stats["requests"]


def test_method_call_is_one_round_trip(conn: rk.Connection) -> None:
    gadget_maker = conn.root  # GETROOT happens once
    before = requests(conn)
    gadget_maker.echo(1)
    assert requests(conn) - before == 1
    before = requests(conn)
    conn.root.echo(1)
    assert requests(conn) - before == 1


def test_method_on_custom_class_is_one_round_trip(classic: rk.Connection) -> None:
    classic.execute("from tests.services import Gadget; g = Gadget()")
    gadget = classic.namespace["g"]
    before = requests(classic)
    assert gadget.double(4) == 8
    assert requests(classic) - before == 1
    before = requests(classic)
    assert gadget.add(1, y=2) == 4
    assert requests(classic) - before == 1


def test_missing_attribute_is_one_round_trip(conn: rk.Connection) -> None:
    root = conn.root
    before = requests(conn)
    assert not hasattr(root, "nothing_here")
    assert requests(conn) - before == 1


def test_ipython_probes_cost_nothing(conn: rk.Connection) -> None:
    gadget = conn.root.gadget()
    before = requests(conn)
    for name in ("_ipython_canary_method_should_not_exist_", "_ipython_display_",
                 "_repr_html_", "_repr_png_", "_repr_latex_", "_repr_json_", "_repr_svg_",
                 "_repr_markdown_", "_repr_javascript_", "_repr_jpeg_", "_repr_pdf_",
                 "__array__", "__array_interface__", "__array_struct__", "__reduce_ex__",
                 "__getstate__", "__wrapped__"):
        getattr(gadget, name, None)
    assert requests(conn) - before == 0


def test_display_in_ipython_is_one_request(conn: rk.Connection) -> None:
    from IPython.core.formatters import DisplayFormatter

    gadget = conn.root.gadget(7)
    formatter = DisplayFormatter()
    before = requests(conn)
    data, _ = formatter.format(gadget)
    assert requests(conn) - before == 1
    assert data["text/plain"] == "Gadget(value=7)"


def test_dropping_a_thousand_proxies_is_a_few_messages(classic: rk.Connection) -> None:
    classic.execute("objs = [object() for _ in range(1000)]")
    objs = classic.namespace["objs"]
    proxies = list(objs)  # one request per 256 items, not per item
    assert len(proxies) == 1000
    sent_before = classic.stats["messages_out"]
    del proxies
    gc.collect()
    assert classic.eval("len(objs)") == 1000
    # the releases went out batched in front of that one request
    assert classic.stats["messages_out"] - sent_before <= 3
    assert classic.stats["releases"] >= 1000

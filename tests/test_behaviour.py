"""What RPyC users rely on, through a real server process on loopback."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

import remote_kernel as rk
from remote_kernel.errors import AccessDenied, RemoteError


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- attribute policy -------------------------------------------------------------------


def test_exposed_prefix_and_decorator(conn: rk.Connection) -> None:
    root = conn.root
    assert root.echo(5) == 5
    assert root.exposed_echo("x") == "x"
    assert root.reset() == "reset done"


def test_public_attrs_are_off_by_default(conn: rk.Connection) -> None:
    with pytest.raises(AccessDenied):
        conn.root.private_thing()
    gadget = conn.root.gadget(3)
    with pytest.raises(AccessDenied):
        gadget.value  # noqa: B018 - a read is an access too
    with pytest.raises(AttributeError):  # AccessDenied is an AttributeError
        gadget.double(2)


def test_setattr_and_delattr_are_denied_by_default(conn: rk.Connection) -> None:
    root = conn.root
    with pytest.raises(AccessDenied):
        root.new_attribute = 1
    with pytest.raises(AccessDenied):
        del root.echo


def test_dunders_that_reach_the_interpreter_are_denied(conn: rk.Connection) -> None:
    from remote_kernel.protocol.messages import Op

    root = conn.root
    function = root.getattr(root, "exposed_echo")  # a netref of a bound method
    for name in ("__dict__", "__globals__", "__code__", "__subclasses__", "__builtins__"):
        with pytest.raises(AttributeError):
            getattr(function, name)
    for name in ("__class__", "__init__", "__reduce__", "__getattribute__", "__func__"):
        with pytest.raises(AccessDenied):
            conn.sync_request(Op.GETATTR, root, name)
    with pytest.raises(AccessDenied):  # the comparison handler cannot reach other methods
        conn.sync_request(Op.CMP, root, root, "__init__")


def test_missing_attribute_is_attribute_error(conn: rk.Connection) -> None:
    with pytest.raises(AttributeError):
        conn.root.no_such_thing  # noqa: B018
    assert not hasattr(conn.root, "no_such_thing")


def test_on_connect_and_on_disconnect(test_server) -> None:
    first = test_server.connect()
    before = first.root.events()
    second = test_server.connect()
    second.close()
    assert wait_for(lambda: first.root.events().count("disconnect") > before.count("disconnect"))
    assert first.root.events().count("connect") >= before.count("connect") + 1
    first.close()


# -- builtin containers ------------------------------------------------------------------


def test_remote_list(conn: rk.Connection) -> None:
    items = conn.root.make_list(3, 1, 2)
    assert isinstance(items, list)
    assert len(items) == 3 and bool(items)
    assert list(items) == [3, 1, 2]
    assert items[0] == 3 and items[-1] == 2 and items[0:2] == [3, 1]
    items[1] = 10
    items.append(4)
    items.sort()
    assert 10 in items and 99 not in items
    assert items == [2, 3, 4, 10]
    assert [2, 3, 4, 10] == items
    assert items + [5] == [2, 3, 4, 10, 5]
    assert items * 2 == [2, 3, 4, 10] * 2
    assert items < [3] and items >= [2]
    assert repr(items) == "[2, 3, 4, 10]" and str(items) == "[2, 3, 4, 10]"
    with pytest.raises(TypeError):
        hash(items)
    with pytest.raises(IndexError):
        items[100]
    empty = conn.root.make_list()
    assert not empty


def test_remote_dict(conn: rk.Connection) -> None:
    data = conn.root.make_dict(a=1, b=2)
    assert isinstance(data, dict)
    assert data["a"] == 1 and data.get("z", 5) == 5
    data["c"] = 3
    assert sorted(data.keys()) == ["a", "b", "c"]
    assert sorted(data.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(data) == ["a", "b", "c"]
    assert "a" in data and len(data) == 3
    del data["a"]
    assert data == {"b": 2, "c": 3}
    with pytest.raises(KeyError):
        data["missing"]


def test_remote_set(conn: rk.Connection) -> None:
    values = conn.root.make_set(1, 2, 3)
    assert isinstance(values, set)
    assert 2 in values and len(values) == 3
    values.add(4)
    assert values | {5} == {1, 2, 3, 4, 5}
    assert values & {1, 9} == {1}
    assert sorted(values) == [1, 2, 3, 4]


def test_hash_is_the_peers_hash(conn: rk.Connection) -> None:
    gadget = conn.root.gadget()
    assert hash(gadget) == conn.root.hash_of(gadget)  # computed where the object lives
    assert hash(gadget) == hash(gadget)
    other = conn.root.gadget()
    assert conn.root.hash_of(other) == hash(other)


def test_identity_round_trip_and_proxy_cache(conn: rk.Connection) -> None:
    gadget = conn.root.gadget()
    assert conn.root.echo(gadget) is gadget
    local = object()
    assert conn.root.echo(local) is local  # our object comes home as itself
    assert conn.root.echo((local, 1))[0] is local


def test_properties_are_read_on_each_access(classic: rk.Connection) -> None:
    classic.execute("from tests.services import Gadget; g = Gadget()")
    gadget = classic.namespace["g"]
    assert gadget.reads == 1
    assert gadget.reads == 2


def test_with_calls_remote_enter_and_exit(classic: rk.Connection) -> None:
    classic.execute("from tests.services import Gadget; g = Gadget()")
    gadget = classic.namespace["g"]
    with gadget as entered:
        assert entered is gadget
    with pytest.raises(ValueError):
        with gadget:
            raise ValueError("inside")
    assert gadget.entered == 2
    assert list(gadget.exited) == [None, "ValueError"]


def test_isinstance_with_remote_classes(classic: rk.Connection) -> None:
    classic.execute("from tests.services import Gadget; g = Gadget()")
    gadget = classic.namespace["g"]
    remote_class = classic.namespace["Gadget"]
    assert isinstance(gadget, remote_class)
    assert not isinstance(classic.namespace["__name__"], remote_class)
    assert isinstance(gadget, type(gadget))


# -- callbacks and exceptions -----------------------------------------------------------


def test_server_calls_back_into_a_client_function(conn: rk.Connection) -> None:
    seen = []
    assert conn.root.call(lambda x: seen.append(x) or x * 2, 21) == 42
    assert seen == [21]


def test_callbacks_nest_two_levels(conn: rk.Connection) -> None:
    def client_fn(server_cb):
        return "client saw " + server_cb()

    assert conn.root.call_twice_nested(client_fn) == "client saw deepest"


def test_builtin_remote_exception_keeps_its_type(conn: rk.Connection) -> None:
    with pytest.raises(ValueError, match="bad value") as info:
        conn.root.raise_value_error("bad value")
    exc = info.value
    assert isinstance(exc, RemoteError)
    assert exc.remote_type == "builtins.ValueError"
    assert "exposed_raise_value_error" in exc.remote_traceback
    assert exc.peer == f"127.0.0.1:{conn.peer.rsplit(':', 1)[1]}"
    frame = exc.remote_frames[-1]
    assert frame.function == "exposed_raise_value_error"
    assert "raise ValueError(message)" in frame.line
    rendered = "\n".join(exc._render_traceback_())
    assert "exposed_raise_value_error" in rendered and "bad value" in rendered


def test_custom_remote_exception(conn: rk.Connection) -> None:
    with pytest.raises(RemoteError) as info:
        conn.root.raise_custom()
    exc = info.value
    assert exc.remote_type == "tests.services.InstrumentError"
    assert type(exc).__name__ == "InstrumentError"
    assert str(exc) == "the gadget failed on purpose"
    assert [f.function for f in exc.remote_frames][-2:] == ["exposed_raise_custom", "fail"]


def test_exception_in_callback_chains_through_both_sides(conn: rk.Connection) -> None:
    def failing(x):
        raise KeyError(f"client failed on {x}")

    with pytest.raises(KeyError) as info:
        conn.root.call(failing, 7)
    text = info.value.remote_traceback
    assert "failing" in text and "exposed_call" in text
    # Outermost first, as Python prints it: the server's frame, then the callback here.
    assert text.index("exposed_call") < text.index("failing")


def test_remote_stop_iteration_ends_a_loop(conn: rk.Connection) -> None:
    items = conn.root.make_list(*range(600))
    assert sum(items) == sum(range(600))
    iterator = iter(conn.root.make_list(1))
    assert next(iterator) == 1
    with pytest.raises(StopIteration):
        next(iterator)


# -- object lifetime ---------------------------------------------------------------------


def test_dropping_proxies_drains_the_servers_table(conn: rk.Connection) -> None:
    baseline = conn.root.table_size()
    gadgets = [conn.root.gadget(i) for i in range(50)]
    assert conn.root.table_size() >= baseline + 50
    del gadgets
    gc.collect()
    assert conn.root.table_size() <= baseline + 1


def test_same_object_twice_is_one_proxy(classic: rk.Connection) -> None:
    classic.execute("shared = [1]")
    first = classic.namespace["shared"]
    second = classic.eval("shared")
    assert first is second
    del first, second
    gc.collect()
    third = classic.eval("shared")
    assert third == [1]


# -- async --------------------------------------------------------------------------------


def test_async_result(conn: rk.Connection) -> None:
    result = rk.async_(conn.root.sleep)(0.3)
    assert not result.ready
    seen = []
    result.add_callback(lambda r: seen.append(r.value))
    result.wait(5)
    assert result.ready and not result.error
    assert result.value == "slept" and seen == ["slept"]
    failing = rk.async_(conn.root.raise_value_error)("async boom")
    failing.wait(5)
    assert failing.error
    with pytest.raises(ValueError, match="async boom"):
        failing.value  # noqa: B018
    late = []
    failing.add_callback(late.append)
    assert late == [failing]


def test_async_wait_timeout_and_expiry(conn: rk.Connection) -> None:
    result = rk.async_(conn.root.sleep)(1.0)
    with pytest.raises(rk.RequestTimeout):
        result.wait(0.1)
    result.set_expiry(0.05)
    time.sleep(0.1)
    assert result.expired
    assert conn.ping() < 5


def test_async_result_is_awaitable(conn: rk.Connection) -> None:
    import asyncio

    async def main():
        return await rk.async_(conn.root.echo)("awaited")

    assert asyncio.run(main()) == "awaited"


def test_request_timeout_leaves_connection_usable(test_server) -> None:
    connection = test_server.connect(config={"sync_request_timeout": 0.3})
    with pytest.raises(rk.RequestTimeout) as info:
        connection.root.sleep(1.0)
    assert isinstance(info.value, TimeoutError)
    assert connection.root.echo("after") == "after"
    connection.close()


# -- classic mode ------------------------------------------------------------------------


def test_classic_mode(classic: rk.Connection, classic_server) -> None:
    assert classic.modules.os.getpid() == classic_server.pid != os.getpid()
    assert classic.modules["os.path"].join("a", "b") == "a/b"
    assert classic.eval("1 + 2") == 3
    classic.execute("value = 40 + 2")
    assert classic.namespace["value"] == 42
    assert classic.eval("value") == 42
    assert classic.builtins.len([1, 2]) == 2
    assert classic.root.builtins is classic.modules.builtins


# -- concurrency ----------------------------------------------------------------------------


def test_eight_threads_on_one_connection(conn: rk.Connection) -> None:
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(1000):
                value = (n, i)
                if conn.root.echo(value) != value:
                    errors.append(("wrong", n, i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish"
    assert errors == []


def test_eight_connections_at_once(test_server) -> None:
    errors = []

    def worker(n: int) -> None:
        try:
            with test_server.connect() as connection:
                for i in range(1000):
                    if connection.root.echo(i * n) != i * n:
                        errors.append((n, i))
        except Exception as exc:  # recorded: an exception in a thread is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a worker did not finish"
    assert errors == []


def test_serve_in_background_with_server_calling_back(conn: rk.Connection) -> None:
    seen = threading.Event()
    messages = []

    def callback(message: str) -> None:
        messages.append(message)
        seen.set()

    background = conn.serve_in_background()
    try:
        conn.root.call_later(callback, 0.1)
        assert seen.wait(5)
        assert messages == ["from a server thread"]
    finally:
        background.stop()


def test_netref_from_server_a_called_on_server_b(test_server, classic_server) -> None:
    a = test_server.connect()
    b = classic_server.connect()
    try:
        gadget_maker = a.root.gadget
        b.namespace["maker"] = gadget_maker
        assert b.eval("repr(maker(5))") == "Gadget(value=5)"
        items = a.root.make_list(1, 2)
        b.namespace["items"] = items
        b.execute("items.append(3)")
        assert items == [1, 2, 3]
    finally:
        a.close()
        b.close()


# -- obtain / deliver ------------------------------------------------------------------------


def test_obtain_and_deliver(conn: rk.Connection, classic: rk.Connection) -> None:
    remote = conn.root.make_dict(a=[1, 2], b={"c": (3, 4)})
    local = rk.obtain(remote)
    assert type(local) is dict and type(local["a"]) is list
    assert local == {"a": [1, 2], "b": {"c": (3, 4)}}
    with pytest.raises(TypeError):
        rk.obtain(conn.root.make_list(conn.root.gadget()))
    delivered = rk.deliver(classic, [1, {"x": 2}])
    assert isinstance(delivered, list) and rk.is_netref(delivered)
    assert classic.modules.builtins.type(delivered).__name__ == "list"
    assert rk.obtain(delivered) == [1, {"x": 2}]


def test_obtain_numpy_array(conn: rk.Connection, classic: rk.Connection) -> None:
    numpy = pytest.importorskip("numpy")
    remote = conn.root.numpy_array(10)
    array = rk.obtain(remote)
    assert isinstance(array, numpy.ndarray) and array.shape == (5, 2)
    assert numpy.array_equal(array, numpy.arange(10.0).reshape(5, 2))
    sent = rk.deliver(classic, numpy.arange(7, dtype="int16"))
    assert classic.modules.builtins.str(sent.dtype) == "int16"
    assert numpy.array_equal(rk.obtain(sent), numpy.arange(7, dtype="int16"))


def test_large_payloads_both_ways(conn: rk.Connection) -> None:
    payload = os.urandom(1024) * (20 * 1024)  # 20 MiB, far larger than the read buffer
    assert conn.root.echo(payload) == payload
    assert conn.root.echo((payload[:300_000], "small")) == (payload[:300_000], "small")


def test_obtain_large_array_in_chunks(classic: rk.Connection) -> None:
    numpy = pytest.importorskip("numpy")
    classic.execute("import numpy\nbig = numpy.arange(1_500_000, dtype='f8').reshape(500, 3000)")
    before = classic.stats["requests"]
    array = rk.obtain(classic.namespace["big"], progress=False)
    assert classic.stats["requests"] - before >= 1 + 3  # announced, then read in chunks
    assert array.shape == (500, 3000) and array.flags.writeable
    assert numpy.array_equal(array, numpy.arange(1_500_000, dtype="f8").reshape(500, 3000))
    classic.execute("blob = bytes(range(256)) * 40_000")
    assert rk.obtain(classic.namespace["blob"]) == bytes(range(256)) * 40_000


def test_large_payload_sent_right_after_dropping_proxies(conn: rk.Connection) -> None:
    """Releases queued before a message with out-of-band buffers go out before them."""
    numpy = pytest.importorskip("numpy")
    for _ in range(3):
        gadgets = [conn.root.gadget(i) for i in range(5)]
        del gadgets
        gc.collect()
        array = numpy.arange(200_000, dtype="f8")
        copy = rk.deliver(conn, array)
        assert numpy.array_equal(rk.obtain(copy, progress=False), array)
        assert conn.root.echo(os.urandom(100_000))


def test_async_ready_polls_without_waiting(conn: rk.Connection) -> None:
    result = rk.async_(conn.root.sleep)(0.2)
    deadline = time.monotonic() + 5
    while not result.ready:  # RPyC users poll like this
        assert time.monotonic() < deadline, "ready never became True"
        time.sleep(0.01)
    assert result.value == "slept"
    callbacks = []
    later = rk.async_(conn.root.echo)("cb")
    later.add_callback(lambda r: callbacks.append(r.value))
    while not later.ready:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert callbacks == ["cb"]


def test_docstring_of_a_netref_is_the_remote_one(classic: rk.Connection) -> None:
    classic.execute("from tests.services import Gadget; g = Gadget()")
    assert classic.namespace["g"].__doc__.startswith("A custom class with methods")
    assert classic.modules.os.getpid.__doc__ == "Return the current process id."

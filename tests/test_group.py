"""rk.Group from plain Python against real server processes: names, concurrency, errors that
keep the others' results, Ctrl-C, timeouts, and closing only what the group opened."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import remote_kernel as rk
from remote_kernel.core.group import fan_out
from tests.conftest import ServerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    tmp = tmp_path_factory.mktemp("group")
    started = [ServerProcess(tmp, "--classic", name=f"pi{n}") for n in range(1, 4)]
    started.append(ServerProcess(tmp, "--classic", "--no-auth", name="pi4"))
    yield started
    for server in started:
        server.stop()


def _press_ctrl_c_after(seconds: float) -> threading.Timer:
    """SIGINT to the main thread, as a terminal's Ctrl-C (or a kernel's Stop) delivers it."""
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    return timer


def test_names_in_order_and_values_per_member(servers: list[ServerProcess]) -> None:
    conn = servers[2].connect()
    try:
        with rk.Group([str(servers[0].file), str(servers[1].file), conn,
                       f"127.0.0.1:{servers[3].port}"]) as group:
            assert group.names == ["pi1", "pi2", f"127.0.0.1:{servers[2].port}",
                                   f"127.0.0.1:{servers[3].port}"]
            pids = group.eval("__import__('os').getpid()")
            assert list(pids) == group.names
            assert list(pids.values()) == [server.pid for server in servers]
            assert group.execute("x = 41") == dict.fromkeys(group.names)
            assert group.map(lambda c: c.eval("x + 1")) == dict.fromkeys(group.names, 42)
            assert set(group.ping()) == set(group.names)
            assert group["pi1"].eval("x") == 41
            assert "pi2" in group and len(group) == 4
    finally:
        conn.close()


def test_a_connection_given_by_file_is_named_after_it(servers: list[ServerProcess]) -> None:
    conn = rk.connect(str(servers[0].file))
    try:
        group = rk.Group([conn])
        assert group.names == ["pi1"]
        group.close()
        assert not conn.closed  # the group did not open it
    finally:
        conn.close()


def test_members_given_by_address_authenticate_with_a_token_file(
        servers: list[ServerProcess]) -> None:
    address = f"127.0.0.1:{servers[0].port}"
    with rk.Group([address], token_file=str(servers[0].token_file)) as group:
        assert group.eval("1 + 2") == {address: 3}
    with pytest.raises(rk.GroupError) as caught:
        rk.Group([address])
    assert isinstance(caught.value.errors[address], rk.AuthenticationError)


@pytest.mark.serial
def test_members_run_concurrently(servers: list[ServerProcess]) -> None:
    with rk.Group({f"s{n}": str(server.file) for n, server in enumerate(servers)}) as group:
        start = time.monotonic()
        group.execute("import time; time.sleep(1.0)")
        elapsed = time.monotonic() - start
    assert elapsed < 1.8, elapsed  # four one-second sleeps at once, not one after another


def test_a_failing_member_keeps_the_others_results(servers: list[ServerProcess]) -> None:
    with rk.Group([str(server.file) for server in servers]) as group:
        group.execute("import os")
        group["pi3"].execute("def broken():\n    raise ValueError('sensor 3 is unplugged')\n")
        for name in ("pi1", "pi2", "pi4"):
            group[name].execute("def broken():\n    return os.getpid()\n")
        with pytest.raises(rk.GroupError) as caught:
            group.eval("broken()")
        error = caught.value
        assert isinstance(error, rk.RemoteKernelError)
        assert list(error.errors) == ["pi3"]
        assert isinstance(error.errors["pi3"], ValueError)
        assert isinstance(error.errors["pi3"], rk.RemoteError)
        assert "raise ValueError('sensor 3 is unplugged')" in error.errors["pi3"].remote_traceback
        assert error.results == {"pi1": servers[0].pid, "pi2": servers[1].pid,
                                 "pi4": servers[3].pid}
        assert "1 of 4 failed" in str(error) and "pi3: ValueError: sensor 3" in str(error)
        rendered = "\n".join(error._render_traceback_())
        assert "[pi3]" in rendered and "sensor 3 is unplugged" in rendered
        # The group stays usable.
        assert group.eval("1 + 1") == dict.fromkeys(group.names, 2)


@pytest.mark.serial
def test_ctrl_c_interrupts_every_member_and_they_stay_usable(
        servers: list[ServerProcess]) -> None:
    with rk.Group([str(server.file) for server in servers]) as group:
        timer = _press_ctrl_c_after(1.0)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            group.execute("import time; time.sleep(60)")
        elapsed = time.monotonic() - start
        timer.join()
        assert elapsed < 1.0 + 2.0, elapsed
        assert set(group.ping()) == set(group.names)
        assert group.eval("'still here'") == dict.fromkeys(group.names, "still here")


@pytest.mark.serial
def test_a_timeout_interrupts_the_slow_members_only(servers: list[ServerProcess]) -> None:
    with rk.Group([str(server.file) for server in servers]) as group:
        group["pi2"].execute("import time\ndef work():\n    time.sleep(30)\n")
        for name in ("pi1", "pi3", "pi4"):
            group[name].execute("def work():\n    return 'quick'\n")
        start = time.monotonic()
        with pytest.raises(rk.GroupError) as caught:
            group.eval("work()", timeout=1.0)
        assert time.monotonic() - start < 1.0 + 2.5
        error = caught.value
        assert list(error.errors) == ["pi2"]
        assert isinstance(error.errors["pi2"], rk.RequestTimeout)
        assert error.results == {"pi1": "quick", "pi3": "quick", "pi4": "quick"}
        assert group["pi2"].eval("1") == 1  # interrupted, not stuck in the sleep


def test_closing_closes_only_what_the_group_opened(servers: list[ServerProcess]) -> None:
    mine = servers[0].connect()
    group = rk.Group([mine, str(servers[1].file)])
    opened = group["pi2"]
    group.close()
    assert opened.closed and not mine.closed
    assert group.closed
    with pytest.raises(rk.RemoteKernelError, match="closed"):
        group.eval("1")
    mine.close()


def test_a_member_that_cannot_connect_closes_the_others(servers: list[ServerProcess],
                                                       tmp_path: Path) -> None:
    before = rk.Group([str(servers[0].file)])
    before.close()
    with pytest.raises(rk.GroupError) as caught:
        rk.Group([str(servers[0].file), "127.0.0.1:1", "no-such-server"])
    error = caught.value
    assert set(error.errors) == {"127.0.0.1:1", "no-such-server"}
    assert isinstance(error.errors["127.0.0.1:1"], rk.ConnectionClosed)
    assert isinstance(error.errors["no-such-server"], ValueError)
    assert list(error.results) == [str(servers[0].file)]


def test_duplicate_names_and_bad_members_are_refused(servers: list[ServerProcess]) -> None:
    conn = servers[0].connect()
    try:
        with pytest.raises(ValueError, match="named"):
            rk.Group([conn, conn])
        assert not conn.closed
        group = rk.Group({"a": conn, "b": conn})  # a mapping names them
        assert group.names == ["a", "b"]
        with pytest.raises(TypeError, match="group member"):
            rk.Group([42])
    finally:
        conn.close()


def test_the_core_group_takes_connections_only(servers: list[ServerProcess]) -> None:
    from remote_kernel.core.group import Group as CoreGroup

    with pytest.raises(ValueError, match="remote_kernel.Group also connects"):
        CoreGroup(["pi1"])


def test_fan_out_bounds_its_threads_and_keeps_the_order() -> None:
    active = []
    peak = []
    lock = threading.Lock()

    def task(n: int) -> int:
        with lock:
            active.append(n)
            peak.append(len(active))
        time.sleep(0.05)
        with lock:
            active.remove(n)
        if n == 3:
            raise RuntimeError("three")
        return n * n

    tasks = {f"t{n}": (lambda n=n: task(n)) for n in range(10)}
    results, errors = fan_out(tasks, max_workers=4)
    assert max(peak) <= 4
    assert list(results) == [f"t{n}" for n in range(10) if n != 3]
    assert results["t9"] == 81
    assert list(errors) == ["t3"] and str(errors["t3"]) == "three"
    with pytest.raises(ValueError):
        fan_out(tasks, max_workers=0)

"""No patch reaches beyond what needs it: ``time.sleep`` is interruptible only while
requests run, the watchdog runs only while a connection is busy, cell output capture only
while cells run, comm forwarding per interpreter. Interrupts let ``finally`` and ``with``
run on every supported Python."""

from __future__ import annotations

import builtins
import gc
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.core.serving import _watchdog

# The state under test is this process's (time.sleep, SIGINT): outside the parallel step.
pytestmark = pytest.mark.serial

ORIGINAL_SLEEP = time.sleep
EVENTS: list[str] = []


class Probe(rk.Service):
    def exposed_sleep_is_patched(self) -> bool:
        return time.sleep is not ORIGINAL_SLEEP

    def exposed_watchdog_running(self) -> bool:
        return _watchdog.running

    def exposed_guarded_loop(self, seconds: float) -> str:
        """A busy loop inside try/except/finally and a with block (the 3.13 case)."""

        class Guard:
            def __enter__(self) -> Guard:
                return self

            def __exit__(self, *exc: Any) -> bool:
                EVENTS.append("exit")
                return False

        deadline = time.monotonic() + seconds
        try:
            with Guard():
                while time.monotonic() < deadline:
                    pass
        except KeyboardInterrupt:
            EVENTS.append("except")
            raise
        finally:
            EVENTS.append("finally")
        return "done"

    def exposed_echo(self, value: Any) -> Any:
        return value


@pytest.fixture
def probe() -> Iterator[Connection]:
    with rk.Server(Probe) as server, rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        yield conn


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_time_sleep_is_patched_only_while_requests_run(probe: Connection) -> None:
    assert time.sleep is ORIGINAL_SLEEP  # an open connection patches nothing
    assert probe.root.sleep_is_patched() is True  # inside a request it is interruptible
    assert _wait_for(lambda: time.sleep is ORIGINAL_SLEEP, 2)


def test_a_sleep_replaced_by_someone_else_is_theirs_again(probe: Connection,
                                                          monkeypatch: Any) -> None:
    def theirs(seconds: float) -> None:
        ORIGINAL_SLEEP(seconds)

    monkeypatch.setattr(time, "sleep", theirs)
    assert probe.root.sleep_is_patched() is True
    assert _wait_for(lambda: time.sleep is theirs, 2)


def test_the_watchdog_runs_only_while_a_connection_is_busy(probe: Connection) -> None:
    assert probe.root.watchdog_running() is True
    assert _wait_for(lambda: not _watchdog.running, 2), "the watchdog kept running idle"
    assert not any(t.name == "rk-watchdog" for t in threading.enumerate())
    assert probe.root.watchdog_running() is True  # and it comes back when needed


def test_a_closed_connection_is_not_kept_alive() -> None:
    with rk.Server(Probe) as server:
        conn = rk.connect("127.0.0.1", server.port, timeout=5)
        assert conn.root.echo(1) == 1
        conn.close()
        ref = weakref.ref(conn)
        del conn
        assert _wait_for(lambda: gc.collect() is not None and ref() is None, 3)


def _interrupt_main_after(seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.timeout(30)
def test_an_interrupt_runs_except_with_and_finally(probe: Connection) -> None:
    for _ in range(3):
        EVENTS.clear()
        _interrupt_main_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            probe.root.guarded_loop(10)
        assert _wait_for(lambda: len(EVENTS) == 3, 5), EVENTS
        assert EVENTS == ["exit", "except", "finally"], (sys.version, EVENTS)
        assert probe.root.echo("usable") == "usable"


# -- cells: output capture and comms ----------------------------------------------------------


class Sink:
    """What a notebook hands ``run_cell``: records everything."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, str]] = []
        self.comms: list[tuple[str, dict]] = []

    def exposed_stream(self, name: str, text: str) -> None:
        self.streams.append((name, text))

    def exposed_display(self, data: Any, metadata: Any) -> None:
        pass

    def exposed_result(self, data: Any, metadata: Any, count: int) -> None:
        pass

    def exposed_clear_output(self, wait: bool) -> None:
        pass

    def exposed_comm(self, msg_type: str, content: Any, metadata: Any, buffers: Any) -> None:
        self.comms.append((msg_type, dict(content)))


@pytest.fixture
def classic_pair() -> Iterator[tuple[Connection, Connection]]:
    with rk.Server(rk.ClassicService) as server:
        first = rk.connect("127.0.0.1", server.port, timeout=5)
        second = rk.connect("127.0.0.1", server.port, timeout=5)
        yield first, second
        first.close()
        second.close()


def test_output_is_captured_only_while_a_cell_runs(
        classic_pair: tuple[Connection, Connection]) -> None:
    conn, _ = classic_pair
    stdout, stderr = sys.stdout, sys.stderr
    had_display = hasattr(builtins, "display")
    import IPython.display

    display = IPython.display.display
    interpreter = conn.root.interpreter
    sink = Sink()
    interpreter.run_cell("import sys\nprint('in the cell')\n"
                         "patched = type(sys.stdout).__name__", sink)
    assert ("stdout", "in the cell\n") in sink.streams
    assert conn.namespace["patched"] == "_CellStream"
    assert sys.stdout is stdout and sys.stderr is stderr
    assert hasattr(builtins, "display") == had_display
    assert IPython.display.display is display


def test_comms_are_forwarded_per_interpreter(
        classic_pair: tuple[Connection, Connection]) -> None:
    comm = pytest.importorskip("comm")
    create_comm = comm.create_comm
    first, second = classic_pair
    sinks = (Sink(), Sink())
    for conn, sink in zip((first, second), sinks, strict=True):
        conn.root.interpreter.attach_comms(sink)
    first.root.interpreter.run_cell(
        "import comm\nmine = comm.create_comm(target_name='first')", sinks[0])
    second.root.interpreter.run_cell(
        "import comm\nmine = comm.create_comm(target_name='second')", sinks[1])
    opened = [[content.get("target_name") for kind, content in sink.comms
               if kind == "comm_open"] for sink in sinks]
    assert opened == [["first"], ["second"]], opened
    assert sorted(first.root.interpreter.comm_info().values(),
                  key=str) == [{"target_name": "first"}]
    first.close()
    second.close()
    assert _wait_for(lambda: comm.create_comm is create_comm, 5), \
        "comm.create_comm stayed patched after the last interpreter left"

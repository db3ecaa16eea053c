"""The extension inside a real ipykernel (started by jupyter_client) against real servers."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from tests.ipython.kernel_client import Kernel

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    kernel = Kernel()
    run = kernel.run("%load_ext remote_kernel")
    assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


@pytest.fixture(scope="module")
def lab(kernel: Kernel, classic_server) -> str:
    run = kernel.run(f"%remote connect {classic_server.file} --name lab")
    assert run.status == "ok", run.reply
    return "lab"


@pytest.mark.slow
def test_remote_cell_streams_each_line_as_it_comes(kernel: Kernel, lab: str) -> None:
    run = kernel.run("%%remote\nimport time\nfor i in range(3):\n    print(i)\n"
                     "    time.sleep(1)\n")
    assert run.status == "ok", run.reply
    streams = run.streams()
    assert [text for _, text in streams] == ["0\n", "1\n", "2\n"]
    gaps = [b[0] - a[0] for a, b in zip(streams, streams[1:], strict=False)]
    assert all(0.7 < gap < 1.5 for gap in gaps), gaps


def test_rich_output_computed_remotely(kernel: Kernel, lab: str) -> None:
    run = kernel.run("%%remote\nclass Table:\n    def _repr_html_(self):\n"
                     "        return '<table><tr><td>42</td></tr></table>'\n"
                     "    def __repr__(self):\n        return 'Table()'\n"
                     "display(Table())\nTable()\n")
    assert run.status == "ok", run.reply
    displays = run.of_type("display_data")
    assert displays and "<td>42</td>" in displays[0]["content"]["data"]["text/html"]
    results = run.of_type("execute_result")
    assert results and results[0]["content"]["data"]["text/plain"] == "Table()"
    assert "text/html" in results[0]["content"]["data"]


def test_remote_error_is_one_error_with_remote_frames(kernel: Kernel, lab: str) -> None:
    kernel.run("%%remote\ndef divide(a, b):\n    return a / b\n")
    run = kernel.run("%remote divide(1, 0)")
    assert run.status == "error"
    content = run.reply["content"]
    assert content["ename"] == "ZeroDivisionError"
    assert content["evalue"] == "division by zero"
    # IPython's colors (syntax highlighting included) apply: read the text without them.
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
    assert "divide" in traceback and "return a / b" in traceback
    assert len(run.of_type("error")) == 1
    run = kernel.run("%%remote\nclass SensorFault(Exception):\n    pass\n"
                     "raise SensorFault('sensor 3 is unplugged')\n")
    content = run.reply["content"]
    assert content["ename"] == "SensorFault"
    # The exception line as IPython prints one (the class name; remote_type has the module).
    assert "SensorFault: sensor 3 is unplugged" in re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
        content["traceback"]))


def test_interrupt_stops_the_remote_call(kernel: Kernel, lab: str) -> None:
    run = kernel.run("%remote time.sleep(60)", interrupt_after=1.0, timeout=30)
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "KeyboardInterrupt"
    assert run.ended - run.started < 1.0 + 2.0
    run = kernel.run("%remote 6 * 7")
    assert run.status == "ok"
    assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"


def test_interrupt_stops_a_remote_cell(kernel: Kernel, lab: str) -> None:
    run = kernel.run("%%remote\nimport time\nprint('started', flush=True)\n"
                     "while True:\n    time.sleep(0.1)\n", interrupt_after=1.5, timeout=30)
    assert run.status == "error"
    assert run.reply["content"]["ename"] == "KeyboardInterrupt"
    assert run.ended - run.started < 1.5 + 2.0
    assert kernel.run("%remote 1 + 1").status == "ok"


def test_device_callbacks_run_in_the_main_thread_while_idle(kernel: Kernel, lab: str) -> None:
    setup = kernel.run(
        "import threading, time\n"
        "ticks = []\n"
        "def on_tick(n):\n"
        "    ticks.append((time.monotonic(), threading.current_thread() is "
        "threading.main_thread()))\n"
        "    print('tick', n)\n"
        "lab.execute('''\n"
        "import threading, time\n"
        "def start_ticker(callback, period, count):\n"
        "    def run():\n"
        "        for n in range(count):\n"
        "            time.sleep(period)\n"
        "            callback(n)\n"
        "    threading.Thread(target=run, daemon=True).start()\n"
        "''')\n"
        "lab.namespace['start_ticker'](on_tick, 0.2, 10)\n"
        "threads_before = threading.active_count()\n")
    assert setup.status == "ok", setup.reply
    time.sleep(3.0)  # the kernel is idle meanwhile
    check = kernel.run("print(len(ticks), all(main for _, main in ticks), "
                       "threading.active_count() - threads_before)\n"
                       "gaps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:])]\n"
                       "print(round(min(gaps), 3), round(max(gaps), 3))")
    count, all_main, extra_threads = check.text().split("\n")[0].split()
    low, high = map(float, check.text().split("\n")[1].split())
    assert int(count) == 10 and all_main == "True" and int(extra_threads) == 0
    assert 0.1 < low and high < 0.5


def test_killed_server_ends_the_cell_and_reconnect_works(kernel: Kernel, start_server) -> None:
    server = start_server("--classic", name="victim")
    run = kernel.run(f"%remote connect {server.file} --name victim")
    assert run.status == "ok", run.reply
    started = {}

    def kill() -> None:
        started["t"] = time.monotonic()
        os.kill(server.pid, signal.SIGKILL)

    run = kernel.run("%%remote victim\nimport time\nprint('working', flush=True)\n"
                     "time.sleep(30)\n", on_started=kill, timeout=30)
    assert run.status == "error"
    assert run.ended - started["t"] < 1.0 + 0.5
    content = run.reply["content"]
    assert content["ename"] == "ConnectionClosed"
    assert len(content["traceback"]) == 1 and "reconnect" in content["traceback"][0]
    server.stop()
    restarted = start_server("--classic", name="victim")
    restarted.file.replace(server.file)
    run = kernel.run("%remote reconnect victim\n")
    assert run.status == "ok", run.reply
    run = kernel.run("victim.modules.os.getpid()")
    assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == \
        str(restarted.pid)


def test_connections_opened_in_a_cell_are_served_while_idle(kernel: Kernel,
                                                             classic_server) -> None:
    setup = kernel.run(
        "import threading, remote_kernel as rk\n"
        f"direct = rk.connect({str(classic_server.file)!r})\n"
        "direct_calls = []\n"
        "direct.execute('''\n"
        "import threading, time\n"
        "def call_soon(callback):\n"
        "    threading.Timer(0.3, callback, args=('from the device',)).start()\n"
        "''')\n"
        "direct.namespace['call_soon'](lambda message: direct_calls.append(\n"
        "    (message, threading.current_thread() is threading.main_thread())))\n")
    assert setup.status == "ok", setup.reply
    time.sleep(1.5)  # idle: the kernel's loop serves the callback
    check = kernel.run("print(direct_calls)")
    assert "[('from the device', True)]" in check.text()


@pytest.mark.slow
def test_a_forty_second_call_through_a_netref_returns(kernel: Kernel, lab: str) -> None:
    """No per-call timeout by default: a live peer's long call is not a hang (the 30 s
    limit this replaces failed it with RequestTimeout)."""
    run = kernel.run("_rk_slow = lab.modules.time.sleep(40) or 'done'\n_rk_slow", timeout=120)
    assert run.status == "ok", run.reply
    assert run.ended - run.started >= 40
    (result,) = run.of_type("execute_result")
    assert result["content"]["data"]["text/plain"] == "'done'"


def _plain(message: dict) -> str:
    return message["content"]["data"]["text/plain"]


def _display_id(message: dict) -> str | None:
    return message["content"].get("transient", {}).get("display_id")


def test_display_ids_update_the_output_in_place(kernel: Kernel, lab: str) -> None:
    """As in local IPython: display(x, display_id=True) returns a handle whose update()
    replaces that output, update_display(y, display_id=...) replaces the one with that id
    (update_display_data messages carrying the id, not new outputs)."""
    run = kernel.run("%%remote lab\nh = display('one', display_id=True)\nprint(type(h).__name__)\n"
                     "h.update('two')\n"
                     "from IPython.display import update_display\n"
                     "display('x', display_id='abc')\n"
                     "update_display('y', display_id='abc')\n")
    assert run.status == "ok", run.reply
    assert run.text() == "DisplayHandle\n"
    displays, updates = run.of_type("display_data"), run.of_type("update_display_data")
    assert [_plain(m) for m in displays] == ["'one'", "'x'"]
    assert [_plain(m) for m in updates] == ["'two'", "'y'"]
    handle_id = _display_id(displays[0])
    assert handle_id and re.fullmatch(r"[0-9a-f]{32}", handle_id)
    assert [_display_id(m) for m in updates] == [handle_id, "abc"]
    assert _display_id(displays[1]) == "abc"
    # In a later cell the handle still updates its output.
    run = kernel.run("%%remote lab\nh.update('three')\n")
    (update,) = run.of_type("update_display_data")
    assert _plain(update) == "'three'" and _display_id(update) == handle_id
    assert not run.of_type("display_data")


def test_a_peers_display_id_is_checked(kernel: Kernel, lab: str) -> None:
    """The id is the peer's data: one that is not a short plain string is not used, and an
    update under it is dropped rather than shown as a new output."""
    run = kernel.run("%%remote lab\nfrom IPython.display import update_display\n"
                     "display('shown', display_id='bad id\"><img>')\n"
                     "update_display('dropped', display_id='bad id\"><img>')\n"
                     f"display('long', display_id={'a' * 129!r})\n")
    assert run.status == "ok", run.reply
    displays = run.of_type("display_data")
    assert [_plain(m) for m in displays] == ["'shown'", "'long'"]
    assert [_display_id(m) for m in displays] == [None, None]
    assert not run.of_type("update_display_data")


def test_a_one_line_remote_shows_what_it_prints_and_displays(kernel: Kernel, lab: str) -> None:
    assert kernel.run("%remote use lab").status == "ok"
    run = kernel.run("%remote print('hello from %remote')")
    assert run.status == "ok", run.reply
    assert run.text() == "hello from %remote\n"
    assert not run.of_type("execute_result")
    run = kernel.run("%remote display('x')")
    assert run.status == "ok", run.reply
    assert [_plain(m) for m in run.of_type("display_data")] == ["'x'"]
    run = kernel.run("%remote print('before') or 6 * 7")
    assert run.text() == "before\n"
    assert _plain(run.of_type("execute_result")[0]) == "42"
    run = kernel.run("%remote import sys; sys.stderr.write('err\\n')")  # a statement
    assert run.status == "ok" and run.text("stderr") == "err\n"

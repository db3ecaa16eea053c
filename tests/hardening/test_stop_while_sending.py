"""A Stop that comes while a large message is being sent (core/stop_deferral.py): the
message goes out whole, then the Stop happens as usual (the request is cancelled on the
peer, one short line, the connection goes on); a second Stop gives the message up and
closes the connection at once, saying so. Before, the first Stop cut the message in the
middle and the connection hung on its next call (the peer read it as the rest of the cut
message). A real server process (with its token: frames are counted) and an in-process one
without a token, behind a relay that slows the client's bytes."""

from __future__ import annotations

import _thread
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.stop_deferral import HELD_BACK, message_was_sent
from tests.conftest import ROOT
from tests.hardening.test_landing import _ThrottledProxy

pytestmark = [pytest.mark.serial, pytest.mark.timeout(90)]

MIB = 1 << 20
SIZE = 24 * MIB  # more than the loopback buffers hold, so the send is still going at the Stop
RATE = 4 * MIB  # bytes a second from client to server


@pytest.fixture(params=["token", "no token"])
def target(request: Any, classic_server: Any) -> Iterator[tuple[int, str | None]]:
    if request.param == "token":
        yield classic_server.port, classic_server.token
        return
    server = rk.Server(rk.ClassicService, port=0)
    threading.Thread(target=server.start, daemon=True).start()
    yield server.port, None
    server.close()


def _stopped(call: Any, *after: float) -> tuple[KeyboardInterrupt, float]:
    """``call()`` with a Stop ``after`` each of these seconds: its KeyboardInterrupt, and
    how long the call took."""
    timers = [threading.Timer(delay, _thread.interrupt_main) for delay in after]
    for timer in timers:
        timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            call()
    finally:
        for timer in timers:
            timer.cancel()
    return info.value, time.monotonic() - started


def test_a_stop_while_a_large_request_goes_out_comes_after_it(
        target: tuple[int, str | None], capsys: pytest.CaptureFixture[str]) -> None:
    port, token = target
    proxy = _ThrottledProxy(port, rate=RATE, up=True)
    conn = rk.connect("127.0.0.1", proxy.port, token=token)
    try:
        length = conn.eval("len")
        stop, took = _stopped(lambda: length(bytes(SIZE)), 0.5)
        assert message_was_sent(stop), "the Stop did not come while sending"
        assert took > 1.0
        assert "interrupted; the connection stays usable" in str(stop)
        assert HELD_BACK.strip() in capsys.readouterr().err
        proxy.rate = None
        assert conn.eval("6 * 7") == 42  # before: no answer, ever
        assert length(b"abc") == 3 and conn.state == "open"
    finally:
        conn.close()
        proxy.close()


def test_a_second_stop_closes_the_connection_at_once(target: tuple[int, str | None]) -> None:
    port, token = target
    proxy = _ThrottledProxy(port, rate=RATE, up=True)
    conn = rk.connect("127.0.0.1", proxy.port, token=token)
    try:
        length = conn.eval("len")
        stop, took = _stopped(lambda: length(bytes(SIZE)), 0.5, 1.0)
        assert took < 1.0 + 2.0  # not after the whole message
        assert "the second Stop closed the connection" in str(stop)
        # (In IPython's colours when another test loaded the IPython layer.)
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in stop._render_traceback_()]
        assert lines == [f"KeyboardInterrupt: {stop}"]
        assert conn.closed
        with pytest.raises(rk.ConnectionClosed, match="cut a message"):
            conn.eval("1")
    finally:
        conn.close()
        proxy.close()


def test_a_large_value_sent_by_deliver_is_stopped_the_same_way(classic_server: Any) -> None:
    np = pytest.importorskip("numpy")
    proxy = _ThrottledProxy(classic_server.port, rate=RATE, up=True)
    conn = rk.connect("127.0.0.1", proxy.port, token=classic_server.token)
    try:
        array = np.arange(SIZE // 8, dtype=np.float64)
        stop, _took = _stopped(lambda: rk.deliver(conn, array), 0.5)
        assert message_was_sent(stop)
        proxy.rate = None
        copy = rk.deliver(conn, array[:1000])
        assert copy.sum() == array[:1000].sum()
    finally:
        conn.close()
        proxy.close()


LOOP = """
import _thread, sys, threading
import remote_kernel as rk
conn = rk.connect(sys.argv[1])
conn.execute("class Sensor:\\n    def read(self):\\n        return 1\\nsensor = Sensor()")
sensor = conn.namespace["sensor"]
for round in range(int(sys.argv[2])):
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    calls = 0
    try:
        while True:
            sensor.read()
            calls += 1
    except KeyboardInterrupt:
        pass
    assert calls > 10, calls
    assert conn.eval("6 * 7") == 42, round
    assert sensor.read() == 1
print("ok", conn.state)
"""


@pytest.mark.parametrize("auth", ["token", "no token"])
def test_stop_in_a_loop_of_short_calls_leaves_the_connection_working(
        tmp_path: Any, start_server: Any, auth: str) -> None:
    # The Stop lands anywhere in the client's machinery, mostly while it sends or reads
    # (before: a token connection failed authentication after half the Stops).
    args = ("--classic",) if auth == "token" else ("--classic", "--no-auth")
    server = start_server(*args, name=f"loop-{auth.replace(' ', '-')}")
    result = subprocess.run([sys.executable, "-c", LOOP, str(server.file), "25"],
                            capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok open"
    assert "unreachable" not in result.stderr  # a resume after a Stop says nothing

"""Links that fail, on real links: two network namespaces joined by a veth pair (the server
in A, the client in B), the link cut and healed with `ip link set`, slowed with `tc ... tbf`,
the client moved to another address, the client stopped with SIGSTOP. Needs root and
iproute2 (the CI runs as root); skipped otherwise. These tests have timing bounds and share
system state: they run serially, in their own step of `make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.net.test_discovery import IP, Lan, Proc, _ip, namespaces

pytestmark = [pytest.mark.serial, pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SERVER_ADDRESS, CLIENT_ADDRESS, MOVED_ADDRESS = "10.204.0.1", "10.204.0.2", "10.204.0.3"

# The client: connects, then runs each line of stdin ({"id", "eval"} in a thread of its own,
# or {"id", "exec"} at once) and prints one JSON line per result; a watcher prints each
# change of conn.state with the time it was seen.
CLIENT_SCRIPT = """
import json, sys, threading, time
import remote_kernel as rk
host, port, token, config = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
lock = threading.Lock()
def emit(**fields):
    with lock:  # one whole line at a time from every thread
        sys.stdout.write(json.dumps(fields) + "\\n")
        sys.stdout.flush()
conn = rk.connect(host, port, token=token, config=config)
ns = {"conn": conn, "rk": rk, "time": time}
def watch():
    last = None
    while True:
        state = conn.state
        if state != last:
            emit(state=state, t=time.monotonic())
            last = state
        if state == "closed":
            return
        time.sleep(0.1)
threading.Thread(target=watch, daemon=True).start()
def run(cid, code):
    start = time.monotonic()
    try:
        value = eval(code, ns)
        emit(id=cid, ok=True, value=repr(value), t=time.monotonic(), elapsed=time.monotonic() - start)
    except BaseException as exc:
        emit(id=cid, ok=False, error=f"{type(exc).__name__}: {exc}", t=time.monotonic(),
             elapsed=time.monotonic() - start)
emit(ready=True, t=time.monotonic())
for line in sys.stdin:
    command = json.loads(line)
    if "exec" in command:
        exec(command["exec"], ns)
        emit(id=command["id"], ok=True, value=None, t=time.monotonic(), elapsed=0)
    else:
        threading.Thread(target=run, args=(command["id"], command["eval"]), daemon=True).start()
"""


# A server with its own config (the serve command takes none): prints where it listens.
CONFIGURED_SERVER_SCRIPT = """
import json, sys
import remote_kernel as rk
host, token, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
server = rk.Server(rk.ClassicService, host=host, port=0, token=token, config=config)
print(json.dumps({"ready": True, "host": host, "port": server.port, "token": token}), flush=True)
server.start()
"""


class Link(Lan):
    """The server's namespace (A) and the client's (B) on one veth pair."""

    NAME = "link"
    ADDRESSES = (SERVER_ADDRESS, CLIENT_ADDRESS)

    def cut(self) -> None:
        """The server's side of the link goes away without a word (an access point lost)."""
        _ip("-n", self.ns_a, "link", "set", "dev", self.veth_a, "down")

    def heal(self) -> None:
        _ip("-n", self.ns_a, "link", "set", "dev", self.veth_a, "up")

    def cut_client_side(self) -> None:
        """The client's side goes away (its Wi-Fi): the server's interface stays up, so its
        sends find no one and the kernel gives the link up there too."""
        _ip("-n", self.ns_b, "link", "set", "dev", self.veth_b, "down")

    def heal_client_side(self) -> None:
        _ip("-n", self.ns_b, "link", "set", "dev", self.veth_b, "up")

    def start_configured_server(self, **config: Any) -> tuple[Proc, dict[str, Any]]:
        proc = self.run(self.ns_a, CONFIGURED_SERVER_SCRIPT, SERVER_ADDRESS, self.token,
                        json.dumps(config), label=f"server-{time.monotonic_ns()}")
        info = proc.expect(lambda v: isinstance(v, dict) and v.get("ready"), 30,
                           "configured server ready")
        return proc, info

    def start_server(self, *args: str) -> tuple[Proc, dict[str, Any]]:
        """`remote-kernel serve --classic` in A; its connection file's contents."""
        path = self.tmp / f"server-{time.monotonic_ns()}.json"
        proc = Proc([IP, "netns", "exec", self.ns_a, sys.executable, "-m", "remote_kernel",
                     "serve", "--classic", "--host", SERVER_ADDRESS, "--port", "0",
                     "--connection-file", str(path), *args],
                    self.env, self.tmp / f"{path.stem}.stderr")
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not path.exists() or not path.read_text().strip():
            assert proc.process.poll() is None, proc.report()
            assert time.monotonic() < deadline, proc.report()
            time.sleep(0.1)
        time.sleep(0.1)
        return proc, json.loads(path.read_text())

    def start_client(self, info: dict[str, Any], **config: Any) -> Client:
        proc = Proc([IP, "netns", "exec", self.ns_b, sys.executable, "-c", CLIENT_SCRIPT,
                     info["host"], str(info["port"]), info["token"], json.dumps(config)],
                    self.env, self.tmp / f"client-{time.monotonic_ns()}.stderr", stdin=True)
        self.procs.append(proc)
        proc.expect(lambda v: isinstance(v, dict) and v.get("ready"), 30, "client ready")
        return Client(proc)


class Client:
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self._next = 0

    def send(self, **command: Any) -> int:
        self._next += 1
        command["id"] = self._next
        assert self.proc.process.stdin is not None
        self.proc.process.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.process.stdin.flush()
        return self._next

    def _find(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """The first line, already seen or still to come, that satisfies ``predicate``
        (lines come in any order: states and results interleave)."""
        for line in list(self.proc.seen):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if predicate(value):
                return value
        return self.proc.expect(predicate, timeout, what)

    def result(self, cid: int, timeout: float) -> dict[str, Any]:
        return self._find(lambda v: isinstance(v, dict) and v.get("id") == cid, timeout,
                          f"result of command {cid}")

    def eval(self, code: str, timeout: float = 30) -> dict[str, Any]:
        return self.result(self.send(eval=code), timeout)

    def execute(self, code: str) -> None:
        assert self.result(self.send(exec=code), 30)["ok"]

    def state(self, state: str, timeout: float, after: float = 0.0) -> dict[str, Any]:
        return self._find(lambda v: isinstance(v, dict) and v.get("state") == state
                          and v.get("t", 0) >= after, timeout, f"state {state}")


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    yield from namespaces(Link(tmp_path_factory.mktemp("link")))  # type: ignore[misc]


@pytest.fixture
def server(link: Link) -> Iterator[dict[str, Any]]:
    proc, info = link.start_server()
    yield info
    proc.stop()


def test_a_silent_cut_is_noticed_and_the_session_resumes(link: Link,
                                                        server: dict[str, Any]) -> None:
    client = link.start_client(server, unreachable_after=4)
    client.execute("items = conn.eval('[1, 2, 3]')")
    assert client.eval("conn.state")["value"] == "'open'"
    link.cut()
    cut_at = time.monotonic()
    pending = client.send(eval="items.append(4) or list(items)")  # waits, no error
    seen = client.state("unreachable", 4 + 5 + 5, after=cut_at)
    assert seen["t"] - cut_at < 4 + 5 + 2  # (the child's clock is the same monotonic clock)
    time.sleep(1)
    link.heal()
    healed_at = time.monotonic()
    resumed = client.state("open", 20, after=healed_at)
    assert resumed["t"] - healed_at < 5
    answer = client.result(pending, 10)
    assert answer["ok"], answer
    assert answer["value"] == "[1, 2, 3, 4]"
    assert "unreachable" in client.proc.report()  # the waiting call printed one line


def test_a_cut_on_the_clients_side_keeps_the_session_past_the_servers_own_timeout(
        link: Link) -> None:
    # The server's kernel gives the link up after its unreachable_after (3 s) and its
    # receive then sees a bare end of stream, as after a goodbye: the session must stay.
    proc, info = link.start_configured_server(unreachable_after=3, resume_window=60)
    try:
        client = link.start_client(info, unreachable_after=3)
        client.execute("items = conn.eval('[1, 2, 3]')")
        link.cut_client_side()
        cut_at = time.monotonic()
        try:
            client.state("unreachable", 3 + 5 + 5, after=cut_at)
            time.sleep(max(0.0, cut_at + 9 - time.monotonic()))  # past the server's 3 s
        finally:
            link.heal_client_side()
        answer = client.eval("items.append(4) or list(items)", timeout=30)
        assert answer["ok"], answer
        assert answer["value"] == "[1, 2, 3, 4]"
        assert "closed the connection" not in proc.report()
    finally:
        proc.stop()


def test_a_call_in_flight_while_the_client_moves_returns_once(link: Link,
                                                               server: dict[str, Any]) -> None:
    client = link.start_client(server, unreachable_after=3)
    client.execute("conn.execute('calls = []\\n"
                   "def slow(x):\\n"
                   "    import time\\n"
                   "    calls.append(x)\\n"
                   "    time.sleep(2)\\n"
                   "    return x * 2')")
    pending = client.send(eval="conn.namespace['slow'](21)")
    time.sleep(0.5)
    # The laptop changes networks: its old address goes, a new one comes.
    _ip("-n", link.ns_b, "addr", "del", f"{CLIENT_ADDRESS}/24", "dev", link.veth_b)
    _ip("-n", link.ns_b, "addr", "add", f"{MOVED_ADDRESS}/24", "dev", link.veth_b)
    try:
        answer = client.result(pending, 30)
        assert answer["ok"], answer
        assert answer["value"] == "42"
        assert client.eval("list(conn.eval('calls'))")["value"] == "[21]"  # ran once
    finally:
        _ip("-n", link.ns_b, "addr", "del", f"{MOVED_ADDRESS}/24", "dev", link.veth_b)
        _ip("-n", link.ns_b, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", link.veth_b)


def test_a_link_cut_for_good_ends_the_session_after_the_window(link: Link,
                                                               server: dict[str, Any]) -> None:
    client = link.start_client(server, unreachable_after=2, resume_window=6)
    client.execute("items = conn.eval('[1]')")
    link.cut()
    try:
        start = time.monotonic()
        answer = client.eval("items.append(2)", timeout=40)
        assert not answer["ok"]
        assert answer["error"].startswith("ConnectionClosed")
        assert "unreachable for 6 s" in answer["error"]
        assert time.monotonic() - start < 2 + 6 + 10
    finally:
        link.heal()


def test_a_server_that_died_behind_a_cut_is_reported_when_the_link_returns(
        link: Link) -> None:
    proc, info = link.start_server()
    client = link.start_client(info, unreachable_after=2)
    client.execute("items = conn.eval('[1]')")
    link.cut()
    client.state("unreachable", 15, after=time.monotonic() - 1)
    proc.process.kill()
    proc.process.wait(10)
    pending = client.send(eval="items.append(2)")
    link.heal()
    healed = time.monotonic()
    answer = client.result(pending, 20)
    assert not answer["ok"]
    assert "not running any more" in answer["error"], answer
    assert answer["t"] - healed < 5


def test_a_copy_over_a_slow_link_is_alive_and_exact(link: Link,
                                                    server: dict[str, Any]) -> None:
    client = link.start_client(server, unreachable_after=4)
    tc = shutil.which("tc")
    if tc is None:
        pytest.skip("tc (iproute2) is needed to slow a link")
    subprocess.run([tc, "-n", link.ns_a, "qdisc", "add", "dev", link.veth_a, "root", "tbf",
                    "rate", "8mbit", "burst", "32kbit", "latency", "400ms"],
                   check=True, capture_output=True, timeout=20)
    try:
        client.execute("conn.execute('import hashlib, os\\ndata = os.urandom(12 << 20)\\n"
                       "digest = hashlib.sha256(data).hexdigest()')")
        answer = client.eval(
            "__import__('hashlib').sha256(rk.obtain(conn.namespace['data'])).hexdigest()"
            " == conn.eval('digest')", timeout=120)
        assert answer["ok"], answer
        assert answer["value"] == "True"
        assert answer["elapsed"] > 10  # it really went through the 8 Mbit/s link
    finally:
        subprocess.run([tc, "-n", link.ns_a, "qdisc", "del", "dev", link.veth_a, "root"],
                       capture_output=True, timeout=20)


def test_a_sleeping_client_goes_on_after_it_wakes(link: Link, server: dict[str, Any]) -> None:
    client = link.start_client(server, unreachable_after=3)
    client.execute("items = conn.eval('[1]')")
    os.kill(client.proc.process.pid, signal.SIGSTOP)  # (ip netns exec execs the client)
    try:
        time.sleep(30 if os.environ.get("RK_LINK_FULL") else 12)
    finally:
        os.kill(client.proc.process.pid, signal.SIGCONT)
    answer = client.eval("items.append(2) or list(items)", timeout=30)
    assert answer["ok"], answer
    assert answer["value"] == "[1, 2]"


def test_a_forty_second_call_returns_on_a_healthy_link(link: Link,
                                                        server: dict[str, Any]) -> None:
    client = link.start_client(server)  # the defaults: no per-call timeout
    answer = client.eval("conn.modules.time.sleep(40) or 'done'", timeout=80)
    assert answer["ok"], answer
    assert answer["value"] == "'done'"
    assert answer["elapsed"] >= 40

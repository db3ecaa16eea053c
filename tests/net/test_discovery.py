"""DNS-SD/mDNS discovery (remote_kernel.net.discovery).

The network tests are real and cross-host: two network namespaces joined by a veth pair stand
for two machines on a LAN. Namespace A runs real servers (one advertised, one not); namespace
B runs ``discover()`` and a client in their own processes, a long-lived zeroconf browser that
reports what it sees as it happens, and a packet capture on B's link to check that no token
ever crosses the wire. Needs root and iproute2 (the CI runs as root); skipped otherwise. The
unit tests feed hostile records through zeroconf's own TXT parser, without a network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from remote_kernel.errors import RemoteKernelError
from remote_kernel.net.discovery import DiscoveryError, advertise, discover
from remote_kernel.net.dnssd import (
    MAX_ADDRESSES,
    MAX_NAME_BYTES,
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    ServerInfo,
    parse_service_info,
    txt_properties,
)

ROOT = Path(__file__).resolve().parents[2]
IP = shutil.which("ip")
ADDRESS_A = "10.203.0.1"
ADDRESS_B = "10.203.0.2"
TXT_KEYS = {"txtvers", "name", "tls", "service", "protocol"}


# ---------------------------------------------------------------------------------------------
# unit tests: hostile records, validation


def _txt(*entries: bytes) -> bytes:
    """Raw TXT rdata: each entry prefixed by its length byte (as on the wire)."""
    return b"".join(bytes([len(entry)]) + entry for entry in entries)


GOOD_TXT = _txt(b"txtvers=1", b"name=lab", b"tls=0", b"service=ClassicService", b"protocol=1")


def _record(name: str = "lab", port: int = 18812, text: bytes | dict = GOOD_TXT,
            addresses: list[str] | None = None) -> ServiceInfo:
    return ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=port, properties=text,
                       parsed_addresses=addresses if addresses is not None else ["192.0.2.7"])


def test_a_well_formed_record_parses() -> None:
    info = parse_service_info(_record())
    assert info == ServerInfo(name="lab", host="192.0.2.7", port=18812, tls=False,
                              service="ClassicService", addresses=("192.0.2.7",), protocol=1)
    tls = parse_service_info(_record(text=GOOD_TXT.replace(b"tls=0", b"tls=1")))
    assert tls is not None and tls.tls is True


def test_what_advertise_announces_parses_back_and_has_no_token() -> None:
    properties = txt_properties("lab", True, "ClassicService", 1)
    assert set(properties) == TXT_KEYS
    info = parse_service_info(_record(text=properties))
    assert info is not None and info.tls and info.service == "ClassicService"
    assert not any("token" in field.name for field in dataclasses.fields(ServerInfo))


@pytest.mark.parametrize("text", [
    b"",                                                     # no TXT at all
    _txt(b"name=lab", b"service=ClassicService"),            # tls missing
    _txt(b"tls", b"service=ClassicService"),                 # tls without a value
    _txt(b"tls=yes", b"service=ClassicService"),             # tls not 0/1
    _txt(b"tls=\xff", b"service=ClassicService"),            # not UTF-8
    _txt(b"tls=0"),                                          # service missing
    _txt(b"tls=0", b"service=\xc3\x28"),                     # invalid UTF-8
    _txt(b"tls=0", b"service=Classic Service"),              # not a class name
    _txt(b"tls=0", b"service=Classic\nService"),             # control character
    _txt(b"tls=0", b"service=<script>alert(1)</script>"),
    _txt(b"tls=0", b"service=" + b"A" * 240),                # too long
    _txt(b"tls=0", b"service=Classic", *[b"x%03d=" % i + b"y" * 200 for i in range(8)]),  # huge
    b"\xff" + b"tls=0",                                      # length byte past the end
], ids=lambda text: repr(text[:24]))
def test_hostile_or_malformed_txt_is_skipped(text: bytes) -> None:
    assert parse_service_info(_record(text=text)) is None


def test_odd_but_harmless_txt_keeps_the_entry() -> None:
    text = _txt(b"tls=0", b"service=ClassicService", b"protocol=banana", b"\xff\xfe=\x00",
                b"token=hunter2", b"name=\xff")
    info = parse_service_info(_record(text=text))
    assert info is not None
    assert info.protocol is None  # unparseable version: unknown, not a crash
    assert "hunter2" not in repr(info)  # unknown keys are not carried anywhere


@pytest.mark.parametrize("name", [
    "bad\x00name", "bad\x1bname", "bad\u202ename", "bad\u200bname", "bad\ufffdname",
    "a" * (MAX_NAME_BYTES + 1), "é" * 32, "dotted.name", "../etc", "back\\slash", "host:22",
    " lab", "lab ",
])
def test_hostile_instance_names_are_skipped(name: str) -> None:
    record = _record()
    # set afterwards: ServiceInfo() refuses some of these, the wire decoder does not
    record.name = f"{name}.{SERVICE_TYPE}"
    assert parse_service_info(record) is None


def test_a_name_of_another_type_is_skipped() -> None:
    record = _record()
    record.name = "lab._ssh._tcp.local."
    assert parse_service_info(record) is None


def test_a_zero_port_is_skipped() -> None:
    assert parse_service_info(_record(port=0)) is None


def test_unusable_addresses_are_dropped_and_bounded() -> None:
    assert parse_service_info(_record(addresses=["0.0.0.0", "224.0.0.251", "127.0.0.1"])) is None
    assert parse_service_info(_record(addresses=[])) is None
    loopback = parse_service_info(_record(addresses=["127.0.0.1"]), allow_loopback=True)
    assert loopback is not None and loopback.host == "127.0.0.1"
    many = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(200)]
    info = parse_service_info(_record(addresses=many))
    assert info is not None and len(info.addresses) == MAX_ADDRESSES


def test_the_address_nearest_to_ours_is_preferred() -> None:
    record = _record(addresses=["172.17.0.1", "192.168.7.20", "fd00::5"])
    info = parse_service_info(record, local_addresses=("192.168.7.3",))
    assert info is not None and info.host == "192.168.7.20"
    assert info.addresses[-1] == "fd00::5"  # IPv6 after IPv4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.binary(max_size=1500), name=st.text(min_size=1, max_size=40),
       port=st.integers(0, 65535),
       addresses=st.lists(st.ip_addresses().map(str), max_size=5))
def test_arbitrary_records_never_raise(text: bytes, name: str, port: int,
                                       addresses: list[str]) -> None:
    try:
        record = _record(name=name, port=port, text=text, addresses=addresses)
    except Exception:
        return
    info = parse_service_info(record)
    if info is not None:
        assert 1 <= info.port <= 65535 and info.host in info.addresses
        assert info.name == name and info.name.isprintable()
        assert len(info.addresses) <= MAX_ADDRESSES


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": ""}, "non-empty"),
    ({"name": "a" * 64}, "63 bytes"),
    ({"name": "lab\n"}, "whitespace"),
    ({"name": "a.b"}, "'.'"),
    ({"name": "x\x07y"}, "control"),
    ({"port": 0}, "port"),
    ({"port": 65536}, "port"),
    ({"port": True}, "port"),
    ({"port": "80"}, "port"),
    ({"service": ""}, "service"),
    ({"service": "Classic Service"}, "service"),
    ({"interface": "eth0"}, "IP address"),
    ({"interface": "0.0.0.0"}, "one address"),
    ({"protocol": -1}, "protocol"),
])
def test_advertise_validates_before_touching_the_network(kwargs: dict[str, Any],
                                                          message: str) -> None:
    arguments: dict[str, Any] = {"name": "lab", "port": 18812, "tls": False,
                                 "service": "ClassicService"}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        advertise(**arguments)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e9, True, "2"])
def test_discover_validates_the_timeout(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout"):
        discover(timeout)


def test_discovery_error_is_a_remote_kernel_error() -> None:
    assert issubclass(DiscoveryError, RemoteKernelError)


def test_the_advertised_protocol_version_is_the_handshakes() -> None:
    auth = pytest.importorskip("remote_kernel.net.auth")
    assert PROTOCOL_VERSION == auth.PROTOCOL_VERSION


def test_discover_works_inside_a_running_event_loop() -> None:
    """A notebook cell runs with the kernel's asyncio loop running in its thread; zeroconf
    must not attach to it (the loop would be blocked while discover() waits, and nothing
    would be received). On loopback, in this process."""
    name = f"loop test {os.getpid()}"
    with advertise(name, 18812, tls=True, service="ClassicService", interface="127.0.0.1"):

        async def cell() -> tuple[list[ServerInfo], float]:
            start = time.monotonic()
            return discover(2.0, interface="127.0.0.1"), time.monotonic() - start

        found, elapsed = asyncio.run(cell())
    assert [(s.name, s.host, s.port, s.tls) for s in found if s.name == name] == \
        [(name, "127.0.0.1", 18812, True)]
    assert elapsed < 5.0


# ---------------------------------------------------------------------------------------------
# two hosts: network namespaces joined by a veth pair

SERVER_SCRIPT = """
import json, os, signal, sys, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # all threads
import remote_kernel as rk
from remote_kernel.net.discovery import advertise
name, host, mode = sys.argv[1:4]
server = rk.Server(rk.ClassicService, host=host, port=0, token=os.environ["RK_TEST_TOKEN"])
threading.Thread(target=server.start, daemon=True).start()
ad = None
if mode == "advertise":
    ad = advertise(name, server.port, tls=False, service="ClassicService", interface=host)
print(json.dumps({"ready": True, "port": server.port, "pid": os.getpid(),
                  "name": ad.name if ad else None}), flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
if ad is not None:
    ad.close()  # goodbye packets
server.close()
print(json.dumps({"closed": True}), flush=True)
"""

DISCOVER_SCRIPT = """
import dataclasses, json, os, sys, time
import remote_kernel as rk
from remote_kernel.net.discovery import discover
timeout, interface, connect = float(sys.argv[1]), sys.argv[2] or None, sys.argv[3] == "connect"
start = time.monotonic()
found = discover(timeout, interface=interface)
result = {"servers": [dataclasses.asdict(s) for s in found],
          "elapsed": time.monotonic() - start}
if connect:
    server = next(s for s in found if s.name == sys.argv[4])
    with rk.connect(server.host, server.port, token=os.environ["RK_TEST_TOKEN"]) as conn:
        result["eval"] = conn.eval("1+1")
        result["pid"] = conn.eval("__import__('os').getpid()")
    try:
        rk.connect(server.host, server.port, token=None).close()
        result["without_token"] = "connected"
    except rk.AuthenticationError as exc:
        result["without_token"] = type(exc).__name__
print(json.dumps(result), flush=True)
"""

WATCH_SCRIPT = """
import json, sys
from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf
from remote_kernel.net.discovery import SERVICE_TYPE
zc = Zeroconf(interfaces=[sys.argv[1]])
def emit(**fields):
    print(json.dumps(fields), flush=True)
def on_change(zeroconf, service_type, name, state_change):
    if state_change is ServiceStateChange.Removed:
        emit(event="removed", name=name)
        return
    info = zeroconf.get_service_info(service_type, name, 3000)
    if info is not None:
        emit(event="added", name=name, port=info.port, server=info.server,
             text=info.text.hex(), addresses=info.parsed_addresses())
browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
emit(event="ready")
sys.stdin.read()
browser.cancel()
zc.close()
"""

CAPTURE_SCRIPT = """
import socket, struct, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
sock.bind((sys.argv[1], 0))
sock.settimeout(0.2)
print("ready", flush=True)
with open(sys.argv[2], "wb") as out:
    while True:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        out.write(struct.pack("!I", len(frame)) + frame)
        out.flush()
"""


class Proc:
    """A child process whose stdout lines are read into a queue by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], stderr: Path,
                 stdin: bool = False) -> None:
        self.args = args
        self.stderr_path = stderr
        self._stderr = open(stderr, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._stderr, env=env, cwd=str(ROOT),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    def expect(self, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first stdout line (JSON-decoded when it is JSON) that satisfies predicate."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: nothing within {timeout} s; {self.report()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.process.wait(5)
                raise AssertionError(f"{what}: the process exited; {self.report()}")
            self.seen.append(line)
            try:
                value: Any = json.loads(line)
            except ValueError:
                value = line
            if predicate(value):
                return value

    def report(self) -> str:
        self._stderr.flush()
        return (f"exit code {self.process.poll()}, stdout {self.seen[-20:]!r}, "
                f"stderr {self.stderr_path.read_text(errors='replace')[-3000:]!r}")

    def stop(self, timeout: float = 5.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdin:
            self.process.stdin.close()
        self._stderr.close()
        return self.process.returncode


def _ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, timeout=20, capture_output=True)


class Lan:
    """Two namespaces on one veth link; processes started in them are stopped at the end."""

    NAME = "disc"  # in the namespaces' and links' names
    ADDRESSES = (ADDRESS_A, ADDRESS_B)

    def __init__(self, tmp: Path) -> None:
        tag = str(os.getpid())  # unique among live processes; at most 7 digits
        self.tmp = tmp
        self.ns_a, self.ns_b = f"rk-{self.NAME}-a-{tag}", f"rk-{self.NAME}-b-{tag}"
        # at most 15 characters
        self.veth_a, self.veth_b = f"rk{self.NAME[0]}a{tag}", f"rk{self.NAME[0]}b{tag}"
        self.token = secrets.token_urlsafe(32)
        self.procs: list[Proc] = []
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), RK_TEST_TOKEN=self.token,
                        PYTHONUNBUFFERED="1")

    def create(self) -> None:
        self.destroy()  # left over by a killed earlier run that had this pid
        _ip("netns", "add", self.ns_a)
        _ip("netns", "add", self.ns_b)
        _ip("link", "add", self.veth_a, "type", "veth", "peer", "name", self.veth_b)
        for ns, dev, address in ((self.ns_a, self.veth_a, self.ADDRESSES[0]),
                                 (self.ns_b, self.veth_b, self.ADDRESSES[1])):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            _ip("-n", ns, "link", "set", "dev", dev, "multicast", "on")
            _ip("-n", ns, "link", "set", "dev", dev, "up")
            _ip("-n", ns, "link", "set", "dev", "lo", "up")

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(3.0)
        for ns in (self.ns_a, self.ns_b):
            subprocess.run([IP or "ip", "netns", "del", ns], capture_output=True, timeout=20)
        subprocess.run([IP or "ip", "link", "del", self.veth_a], capture_output=True,
                       timeout=20)  # only if it never left the root namespace

    def run(self, ns: str, script: str, *args: str, label: str, stdin: bool = False) -> Proc:
        assert IP is not None
        proc = Proc([IP, "netns", "exec", ns, sys.executable, "-c", script, *args],
                    self.env, self.tmp / f"{label}.stderr", stdin=stdin)
        self.procs.append(proc)
        return proc

    def start_server(self, name: str, advertised: bool = True) -> Proc:
        return self.run(self.ns_a, SERVER_SCRIPT, name, ADDRESS_A,
                        "advertise" if advertised else "quiet", label=f"server-{name}")

    def serve(self, name: str, advertised: bool = True,
              proc: Proc | None = None) -> tuple[Proc, dict[str, Any]]:
        proc = proc or self.start_server(name, advertised)
        ready = proc.expect(lambda v: isinstance(v, dict) and v.get("ready"), 20,
                            f"server {name} ready")
        return proc, ready

    def discover(self, timeout: float = 2.0, interface: str = "", connect: str = "",
                 label: str = "discover") -> dict[str, Any]:
        args = [str(timeout), interface, "connect" if connect else "list", connect]
        proc = self.run(self.ns_b, DISCOVER_SCRIPT, *args, label=label)
        result = proc.expect(lambda v: isinstance(v, dict) and "servers" in v, timeout + 20,
                             label)
        assert proc.process.wait(10) == 0, proc.report()
        return result


def _need_root_and_iproute2() -> None:
    if IP is None:
        pytest.skip("iproute2 (`ip`) is needed for the network-namespace tests "
                    "(apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (the CI runs these tests as root)")


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    yield from namespaces(Lan(tmp_path_factory.mktemp("lan")))


def namespaces(net: Lan) -> Iterator[Lan]:
    """A module fixture's body: ``net`` made (skipped where namespaces cannot be), yielded,
    destroyed."""
    _need_root_and_iproute2()
    try:
        net.create()
    except subprocess.CalledProcessError as exc:
        net.destroy()
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        yield net
    finally:
        net.destroy()


@pytest.fixture(scope="module")
def capture(lan: Lan) -> Path:
    """Every frame on B's link, from before the first server starts."""
    path = lan.tmp / "b.frames"
    proc = lan.run(lan.ns_b, CAPTURE_SCRIPT, lan.veth_b, str(path), label="capture")
    proc.expect(lambda v: v == "ready", 10, "capture ready")
    return path


@pytest.fixture(scope="module")
def watcher(lan: Lan, capture: Path) -> Proc:
    """A zeroconf browser in B that reports additions and removals as they happen."""
    proc = lan.run(lan.ns_b, WATCH_SCRIPT, ADDRESS_B, label="watcher", stdin=True)
    proc.expect(lambda v: isinstance(v, dict) and v.get("event") == "ready", 15,
                "watcher ready")
    return proc


@pytest.fixture(scope="module")
def servers(lan: Lan, watcher: Proc) -> dict[str, dict[str, Any]]:
    """In A: 'bench one' advertised, 'quiet one' not. Both serve on A's address."""
    quiet_proc = lan.start_server("quiet one", advertised=False)
    _, advertised = lan.serve("bench one")
    _, quiet = lan.serve("quiet one", proc=quiet_proc)
    watcher.expect(lambda v: isinstance(v, dict) and v.get("event") == "added"
                   and v["name"].startswith("bench one."), 10, "watcher sees 'bench one'")
    return {"advertised": advertised, "quiet": quiet}


@pytest.fixture(scope="module")
def found(lan: Lan, servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """discover() on every interface of B, then a connection to what it found."""
    return lan.discover(2.0, connect="bench one")


def test_an_advertised_server_is_found_from_another_host(
        found: dict[str, Any], servers: dict[str, dict[str, Any]]) -> None:
    by_name = {server["name"]: server for server in found["servers"]}
    assert "bench one" in by_name, found
    server = by_name["bench one"]
    assert server["host"] == ADDRESS_A
    assert server["port"] == servers["advertised"]["port"]
    assert server["tls"] is False
    assert server["service"] == "ClassicService"
    assert server["addresses"] == [ADDRESS_A]
    assert 2.0 <= found["elapsed"] < 5.0


def test_a_server_that_does_not_advertise_is_not_found(
        found: dict[str, Any], servers: dict[str, dict[str, Any]]) -> None:
    assert "quiet one" not in {server["name"] for server in found["servers"]}
    assert servers["quiet"]["port"] not in {server["port"] for server in found["servers"]}


def test_the_discovered_server_is_reached_with_its_token(
        found: dict[str, Any], servers: dict[str, dict[str, Any]]) -> None:
    assert found["eval"] == 2
    assert found["pid"] == servers["advertised"]["pid"]  # the process in namespace A
    assert found["without_token"] == "AuthenticationError"


def test_no_token_is_announced_or_sent(lan: Lan, found: dict[str, Any], watcher: Proc,
                                       capture: Path) -> None:
    assert lan.token not in json.dumps(found["servers"])
    added = next(json.loads(line) for line in watcher.seen
                 if '"added"' in line and '"bench one.' in line)
    text = bytes.fromhex(added["text"])
    keys, pos = set(), 0
    while pos < len(text):
        entry = text[pos + 1: pos + 1 + text[pos]]
        pos += 1 + text[pos]
        keys.add(entry.partition(b"=")[0].decode())
    assert keys == TXT_KEYS
    assert lan.token.encode() not in text and lan.token not in added["server"]
    # every frame on B's link: the mDNS traffic and the TCP sessions of the connection
    data = capture.read_bytes()
    frames, pos = [], 0
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("!I", data, pos)
        frames.append(data[pos + 4: pos + 4 + size])
        pos += 4 + size
    mdns = [f for f in frames if len(f) > 42 and f[12:14] == b"\x08\x00" and f[23] == 17
            and f[36:38] == struct.pack("!H", 5353)]
    assert any(b"bench one" in frame for frame in mdns), f"{len(frames)} frames captured"
    for frame in frames:
        assert lan.token.encode() not in frame
        assert lan.token[:16].encode() not in frame


CONFLICT_SCRIPT = """
import json, sys
from remote_kernel.net.discovery import DiscoveryError, advertise
try:
    advertise("bench one", 9999, tls=False, service="ClassicService", interface=sys.argv[1])
    print(json.dumps({"refused": None}), flush=True)
except DiscoveryError as exc:
    print(json.dumps({"refused": str(exc)}), flush=True)
with advertise("bench one", 9999, tls=False, service="ClassicService", interface=sys.argv[1],
               allow_name_change=True) as renamed:
    print(json.dumps({"renamed": renamed.name}), flush=True)
"""


def test_a_name_taken_on_the_network_is_refused_or_renamed(lan: Lan, servers: dict[str, Any],
                                                           watcher: Proc) -> None:
    """Host B tries to take A's name. The watcher in B is a second mDNS socket on port 5353
    there, which takes some of the unicast replies to zeroconf's own probes (about one run in
    two went unnoticed before advertise() asked for multicast answers first)."""
    proc = lan.run(lan.ns_b, CONFLICT_SCRIPT, ADDRESS_B, label="conflict")
    refused = proc.expect(lambda v: isinstance(v, dict) and "refused" in v, 15, "refusal")
    assert refused["refused"] and "already advertised" in refused["refused"], refused
    renamed = proc.expect(lambda v: isinstance(v, dict) and "renamed" in v, 15, "renaming")
    assert renamed["renamed"] == "bench one-2"
    assert proc.process.wait(10) == 0, proc.report()


def test_a_stopped_server_says_goodbye_and_is_not_found_again(lan: Lan, watcher: Proc,
                                                              found: dict[str, Any]) -> None:
    proc, ready = lan.serve("short lived")
    watcher.expect(lambda v: isinstance(v, dict) and v.get("event") == "added"
                   and v["name"].startswith("short lived."), 10, "watcher sees it")
    stopped = time.monotonic()
    proc.process.send_signal(signal.SIGTERM)
    proc.expect(lambda v: isinstance(v, dict) and v.get("closed"), 10, "server closes")
    assert proc.process.wait(10) == 0, proc.report()
    # the goodbye packets make a browser that had seen it drop it at once (records expire
    # one second after a goodbye), not when the two-minute TTL runs out
    watcher.expect(lambda v: isinstance(v, dict) and v.get("event") == "removed"
                   and v["name"].startswith("short lived."), 5, "watcher sees it go")
    assert time.monotonic() - stopped < 5
    again = lan.discover(2.0, interface=ADDRESS_B, label="discover-after-stop")
    names = {server["name"] for server in again["servers"]}
    assert "short lived" not in names
    assert "bench one" in names  # still advertised: the discovery itself worked
    assert ready["port"] not in {server["port"] for server in again["servers"]}


def test_the_cli_advertises_and_discovers_across_hosts(lan: Lan, tmp_path: Path) -> None:
    """`remote-kernel serve --advertise` on host A, `remote-kernel discover` on host B, then a
    connection with the token from A's connection file (never from the network)."""
    assert IP is not None
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = dict(lan.env, JUPYTER_RUNTIME_DIR=str(runtime))
    serve = Proc([IP, "netns", "exec", lan.ns_a, sys.executable, "-m", "remote_kernel", "serve",
                  "--host", ADDRESS_A, "--name", "clibench", "--advertise",
                  "--interface", ADDRESS_A], env, tmp_path / "serve.stderr")
    lan.procs.append(serve)
    connection_file = runtime / "remote-kernel-clibench.json"
    deadline = time.monotonic() + 30
    while not connection_file.exists():
        assert serve.process.poll() is None and time.monotonic() < deadline, serve.report()
        time.sleep(0.1)
    time.sleep(4)  # advertise() probes the name before announcing (about 3.5 s)
    listing = subprocess.run(
        [IP, "netns", "exec", lan.ns_b, sys.executable, "-m", "remote_kernel", "discover",
         "--json", "--timeout", "3"], capture_output=True, text=True, timeout=60, env=env)
    assert listing.returncode == 0, listing.stderr
    servers = {s["name"]: s for s in json.loads(listing.stdout)}
    assert servers["clibench"]["host"] == ADDRESS_A
    info = json.loads(connection_file.read_text())
    assert info["token"] not in listing.stdout
    script = ("import json, sys, remote_kernel as rk\n"
              "host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
              "with rk.connect(host, port, token=token) as conn:\n"
              "    print(json.dumps({'sum': conn.eval('20 + 22')}))\n")
    client = subprocess.run(
        [IP, "netns", "exec", lan.ns_b, sys.executable, "-c", script, ADDRESS_A,
         str(servers["clibench"]["port"]), info["token"]],
        capture_output=True, text=True, timeout=60, env=env)
    assert client.returncode == 0, client.stderr
    assert json.loads(client.stdout) == {"sum": 42}
    assert serve.stop(10.0) == 0, serve.report()
    assert not connection_file.exists()  # removed on SIGTERM


# ---------------------------------------------------------------------------------------------
# the downgrade (issue 21): an impostor advertises a TLS server's name with tls=0 and relays

TLS_SERVER_SCRIPT = """
import json, os, signal, sys, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
import remote_kernel as rk
host, cert, key = sys.argv[1:4]
server = rk.Server(rk.ClassicService, host=host, port=0, token=os.environ["RK_TEST_TOKEN"],
                   tls={"cert": cert, "key": key})
threading.Thread(target=server.start, daemon=True).start()
print(json.dumps({"ready": True, "port": server.port}), flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.close()
"""

IMPOSTOR_SCRIPT = """
import json, signal, socket, ssl, sys, threading
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
from remote_kernel.net.discovery import advertise
name, host, real_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
listener = socket.create_server((host, 0))
def pump(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def accept():
    while True:
        client, _ = listener.accept()
        upstream = context.wrap_socket(socket.create_connection((host, real_port)))
        print(json.dumps({"relaying": True}), flush=True)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
ad = advertise(name, listener.getsockname()[1], tls=False, service="ClassicService",
               interface=host)
print(json.dumps({"ready": True, "port": listener.getsockname()[1]}), flush=True)
signal.sigwait({signal.SIGTERM, signal.SIGINT})
ad.close()
"""

MAGIC_CLIENT_SCRIPT = """
import json, sys
from remote_kernel.ipython.registry import open_connection
try:
    conn = open_connection(sys.argv[1], sys.argv[2])
    result = {"connected": True, "eval": conn.eval("1 + 1")}
except Exception as exc:
    result = {"error": str(exc), "type": type(exc).__name__}
print(json.dumps(result), flush=True)
"""


def test_an_impostor_advertising_tls_0_for_a_tls_server_gets_no_session(lan: Lan) -> None:
    certs = pytest.importorskip("tests.hardening.certs", reason="needs cryptography")
    ca = certs.CertificateAuthority(lan.tmp, "downgrade-ca")
    pair = ca.issue("server", hosts=(ADDRESS_A,))
    real = lan.run(lan.ns_a, TLS_SERVER_SCRIPT, ADDRESS_A, pair.cert, pair.key,
                   label="tls-server")
    ready = real.expect(lambda v: isinstance(v, dict) and v.get("ready"), 20, "tls server")
    impostor = lan.run(lan.ns_a, IMPOSTOR_SCRIPT, "lab tls", ADDRESS_A, str(ready["port"]),
                       label="impostor")
    fake = impostor.expect(lambda v: isinstance(v, dict) and v.get("ready"), 20, "impostor")
    token_file = lan.tmp / "downgrade.token"
    token_file.write_text(lan.token)
    client = lan.run(lan.ns_b, MAGIC_CLIENT_SCRIPT, "lab tls", str(token_file),
                     label="downgrade-client")
    result = client.expect(lambda v: isinstance(v, dict) and ("error" in v or "connected" in v),
                           40, "downgrade client")
    assert "connected" not in result, result
    impostor.expect(lambda v: isinstance(v, dict) and v.get("relaying"), 5,
                    "the client reached the impostor")
    assert result["type"] == "AuthenticationError", result
    assert "\n" not in result["error"]
    assert result["error"].startswith(
        f"lab tls at {ADDRESS_A}:{fake['port']} (advertised) could not prove it knows your "
        "token; not connected"), result

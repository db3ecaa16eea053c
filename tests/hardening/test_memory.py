"""Memory is bounded by what the peer sent: decoding cannot multiply a message, and every
cache keyed by the peer's data (exception classes, netref classes, the policy's decisions)
is per connection, bounded, and gone with it."""

from __future__ import annotations

import gc
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import BaseNetref
from remote_kernel.net.auth import client_handshake
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol import boxing, exceptions, policy, unboxing
from remote_kernel.protocol.messages import OID, Ext, Kind, Op
from tests.hardening.rawpeer import RawPeer, exc, packb, ref

MIB = 1 << 20


def _peak_and_current(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmHWM"], values["VmRSS"]


def _nils_request(count: int, arrays: int = 1) -> bytes:
    """A framed PING whose argument is ``arrays`` arrays of ``count // arrays`` nils each:
    about ``count`` bytes that would decode to ``count`` pointers and more."""
    per = count // arrays
    inner = b"\xdd" + struct.pack(">I", per) + b"\xc0" * per
    body = packb(Kind.REQUEST) + packb(7) + packb(int(Op.PING))
    if arrays == 1:
        payload = b"\x94" + body + inner
    else:
        payload = b"\x94" + body + b"\xdd" + struct.pack(">I", arrays) + inner * arrays
    return struct.pack(">I", len(payload)) + payload


def _closed_or_answered(sock: socket.socket, timeout: float) -> bool:
    """Read until the server closes (True) or has sent a whole reply back (False)."""
    deadline = time.monotonic() + timeout
    need: int | None = None
    got = 0
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            break
        except OSError:
            return True
        if not data:
            return True
        got += len(data)
        if need is None and got >= 4:
            need = 4 + struct.unpack(">I", data[:4])[0]  # the first frame of the answer
        if need is not None and got >= need:
            return False
    return False


class _Echoer:
    """Another client whose echo must stay quick while the attack is decoded."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.worst = 0.0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                assert self.conn.root.echo("x") == "x"
            except BaseException as error:  # noqa: BLE001 - recorded and checked
                self.errors.append(error)
                return
            self.worst = max(self.worst, time.monotonic() - started)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


@pytest.mark.serial
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("arrays", [1, 256], ids=["one array", "256 arrays"])
def test_a_256_mib_ping_of_nils_stays_bounded(start_server: Any, arrays: int) -> None:
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    with server.connect(timeout=10) as other:
        assert other.root.echo(1) == 1
        time.sleep(0.3)
        _, before = _peak_and_current(server.pid)
        echoer = _Echoer(other)
        attack = _nils_request(256 * MIB, arrays)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            client_handshake(SocketTransport(sock, "attacker"), None, 10)
            sock.settimeout(60)
            try:
                sock.sendall(attack)
            except OSError:
                pass  # closed on us halfway: fine
            del attack
            closed = _closed_or_answered(sock, 120)
        finally:
            sock.close()
            echoer.stop()
        peak, _ = _peak_and_current(server.pid)
        grown = peak - before
        print(f"256 MiB of nils in {arrays} array(s): server RSS {before / MIB:.0f} MiB, "
              f"peak {peak / MIB:.0f} MiB (+{grown / MIB:.0f}); other client's worst echo "
              f"{echoer.worst:.3f} s")
        assert not echoer.errors, echoer.errors
        assert echoer.worst < 2.0
        assert grown < 600 * MIB
        assert closed, "the hostile message was answered instead of closing its connection"
        assert other.root.echo("after") == "after"
        assert server.process.poll() is None


def _one_buffer_named(times: int, as_array: bool) -> bytes:
    """A framed PING whose argument names ONE 1 MiB out-of-band buffer ``times`` times
    (as bytes values, or as the data of uint8 arrays): about 1 MiB + 16 bytes a name.
    Each use would copy: a buffer announced as an array's (kind 0) into bytes, one
    announced as bytes (kind 1) into an array's writable memory."""
    name = ExtType(Ext.BUFFER, OID.pack(0))
    if as_array:
        name = ExtType(Ext.NDARRAY, packb(["|u1", [MIB], False, name]))
    request = packb([Kind.REQUEST, 7, int(Op.PING), [name] * times])
    announced = packb([Kind.BUFFERS, 1, b"\1" if as_array else b"\0"])
    return b"".join(struct.pack(">I", len(part)) + part
                    for part in (announced, b"\x5a" * MIB, request))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("as_array", [False, True], ids=["bytes", "arrays"])
def test_one_buffer_named_1000_times_is_refused_without_copies(
        start_server: Any, as_array: bool) -> None:
    if as_array:
        pytest.importorskip("numpy")
    server = start_server("--service", "tests.services:TestService", "--no-auth")
    with server.connect(timeout=10) as other:
        assert other.root.echo(1) == 1
        time.sleep(0.3)
        _, before = _peak_and_current(server.pid)
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            client_handshake(SocketTransport(sock, "attacker"), None, 10)
            sock.sendall(_one_buffer_named(1000, as_array))
            closed = _closed_or_answered(sock, 60)
        finally:
            sock.close()
        peak, _ = _peak_and_current(server.pid)
        grown = peak - before
        print(f"one 1 MiB buffer named 1000 times ({'arrays' if as_array else 'bytes'}): "
              f"server RSS {before / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
              f"(+{grown / MIB:.0f})")
        assert closed, "the message was answered instead of closing its connection"
        assert grown < 64 * MIB  # what was received, a few times: not 1000 copies
        assert other.root.echo("after") == "after"
        assert server.process.poll() is None


def test_an_out_of_band_buffer_used_twice_is_a_protocol_error(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    name = ExtType(Ext.BUFFER, OID.pack(0))
    raw.send([Kind.BUFFERS, 1, b"\1", request[1]])
    raw.send_bytes(struct.pack(">I", 64 * 1024) + bytes(64 * 1024))
    raw.send([Kind.REPLY, request[1], [name, name]])
    # (Decoded by the background reader: the waiting call learns why it was closed.)
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed),
                       match="buffer 0 is used twice"):
        result.wait(10)
        result.value  # noqa: B018 - raises
    assert victim.closed



def _reply_with(victim: Connection, raw: RawPeer, value: Any, timeout: float = 60) -> Any:
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    raw.send([Kind.REPLY, request[1], value])
    result.wait(timeout)
    return result.value


def _remote_error_classes() -> int:
    gc.collect()
    return len(rk.RemoteError.__subclasses__())


def _netref_classes() -> int:
    gc.collect()
    return len(BaseNetref.__subclasses__())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_100k_peer_named_exception_classes_leave_nothing_behind() -> None:
    before = _remote_error_classes()
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    serving = victim.serve_in_background()
    raw = RawPeer(right)
    try:
        for batch in range(10):
            names = [exc("hostile.mod", f"E{batch}_{i}", "x") for i in range(10_000)]
            errors = _reply_with(victim, raw, names)
            assert len(errors) == 10_000 and str(errors[-1]) == "x"
            del errors
            # While the connection lives, its cache stays within its bound.
            cache = victim._boxer.exception_classes
            assert 0 < len(cache) <= exceptions.MAX_CLASSES
            del cache
    finally:
        victim.close()
        serving.stop(5)
        right.close()
    assert victim._boxer.exception_classes == {}  # freed with the connection
    del victim, serving, raw
    grown = _remote_error_classes() - before
    print(f"100k peer-named exception classes: {grown} left after disconnect")
    assert grown < 10


def _decoding_peak(names: list[ExtType]) -> int:
    """Bytes allocated at the peak while a fresh connection decodes a reply of ``names``
    (and holds the exceptions)."""
    import tracemalloc

    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    serving = victim.serve_in_background()
    raw = RawPeer(right)
    try:
        gc.collect()
        tracemalloc.start()
        try:
            errors = _reply_with(victim, raw, names)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(errors) == len(names) and str(errors[-1]) == "x"
        assert errors[-1].remote_type.startswith("hostile.mod.")  # its own name kept
        return peak
    finally:
        victim.close()
        serving.stop(5)
        right.close()


@pytest.mark.timeout(120)
def test_exception_classes_past_the_bound_cost_no_more_than_one_class() -> None:
    """20k exceptions of 20k names cost about what 20k of one name do: past the
    connection's bound of classes, no class is made per name (each ~1.5 KiB)."""
    count = 20_000
    same = _decoding_peak([exc("hostile.mod", "Same", "x") for _ in range(count)])
    distinct = _decoding_peak([exc("hostile.mod", f"E{i}", "x") for i in range(count)])
    print(f"{count} exceptions: one name {same / MIB:.1f} MiB at the peak, {count} names "
          f"{distinct / MIB:.1f} MiB")
    assert distinct < 1.3 * same + exceptions.MAX_CLASSES * 4096


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_15k_peer_type_descriptors_leave_nothing_behind() -> None:
    before = _netref_classes()
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    serving = victim.serve_in_background()
    raw = RawPeer(right)
    try:
        for batch in range(3):  # 15,000: within the cap of 16,384 types per connection
            refs = [ref(batch * 5000 + i + 1, batch * 5000 + i + 1,
                        ["evil", f"C{batch}_{i}", ["m"], [], 0, ""]) for i in range(5000)]
            proxies = _reply_with(victim, raw, refs)
            assert len(proxies) == 5000
            del proxies
    finally:
        victim.close()
        serving.stop(5)
        right.close()
    del victim, serving, raw
    grown = _netref_classes() - before
    print(f"15k peer type descriptors: {grown} netref classes left after disconnect")
    assert grown < 10


def test_peer_type_descriptors_are_capped_per_connection(
        hostile: tuple[Connection, RawPeer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unboxing, "MAX_PEER_TYPES", 100)
    victim, raw = hostile
    refs = [ref(i + 1, i + 1, ["evil", f"C{i}", [], [], 0, ""]) for i in range(101)]
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
        _reply_with(victim, raw, refs, timeout=5)
    assert victim.closed and "types" in victim.close_reason


def test_the_policy_keeps_few_decisions_about_names_the_peer_chose() -> None:
    class Open(rk.Service):
        def on_connect(self, conn: Connection) -> None:
            Open.conn = conn

        def exposed_echo(self, value: Any) -> Any:
            return value

    with rk.Server(Open) as server, rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        root = conn.root
        for i in range(6000):
            with pytest.raises(AttributeError):
                conn.sync_request(Op.GETATTR, root, f"name_{i}_" + "x" * (1000 if i % 2 else 10))
        cache = Open.conn._policy._by_type
        assert len(cache) <= policy.MAX_CACHED
        assert all(len(name) <= policy.MAX_CACHED_NAME for _, name in cache)


def test_a_sender_refuses_more_items_than_a_peer_would_decode(
        conn: rk.Connection) -> None:
    too_many = tuple(range(boxing.MAX_VALUE_ITEMS + 1))
    with pytest.raises(rk.ProtocolError, match="items"):
        conn.root.echo(too_many)
    assert conn.root.echo(tuple(range(1000))) == tuple(range(1000))
    assert not conn.closed


def test_a_message_decoding_to_too_many_items_closes_the_connection(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    count = unboxing.MAX_ITEMS // 4 + 1
    # Five arrays of a quarter of the limit each: none too long alone, too many together.
    chunk = b"\xdd" + struct.pack(">I", count) + b"\xc0" * count
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    payload = b"\x93" + packb(Kind.REPLY) + packb(request[1]) + b"\x95" + chunk * 5
    raw.send_bytes(struct.pack(">I", len(payload)) + payload)
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
        result.wait(30)
        _ = result.value
    assert victim.closed and "items" in victim.close_reason


def test_items_nested_in_ext_values_count_too(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    count = unboxing.MAX_ITEMS // 2 + 1
    nested = b"\xdd" + struct.pack(">I", count) + b"\xc0" * count
    lists = [ExtType(Ext.LIST, nested), ExtType(Ext.LIST, nested)]
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
        _reply_with(victim, raw, lists, timeout=30)
    assert victim.closed

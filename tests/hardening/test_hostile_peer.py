"""A peer that attacks: the RPyC CVE classes and their relatives.

A hostile server (spoken to by hand, byte by byte) tries to reach into a client; a hostile
client tries to get past a server's attribute policy. Each gets nothing, and neither process
runs code it did not ask for.
"""

from __future__ import annotations

import copy
import pickle
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.core.netref import LOCAL_DENIED
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.codec import HEADER
from remote_kernel.protocol.messages import Ext, Kind, Op
from tests.hardening.rawpeer import Decoded, RawPeer, exc, frame, packb, peerref, ref

# Names whose reading would hand a peer the keys to our interpreter.
DENIED = [
    "__globals__", "__code__", "__closure__", "__builtins__", "__subclasses__", "__class__",
    "__dict__", "__init__", "__getattribute__", "__reduce__", "__reduce_ex__", "__func__",
    "__self__", "__module__", "__defaults__", "__kwdefaults__", "__base__", "__bases__",
    "__mro__", "__import__", "__loader__", "__spec__", "__setattr__", "__delattr__",
    "__init_subclass__", "__new__", "__getstate__", "__weakref__", "_private", "__private",
    "_rk_conn", "gi_frame", "f_globals", "tb_frame", "func_globals", "mro", "modules",
    "eval", "execute", "namespace", "builtins", "on_connect", "on_disconnect", "__array__",
]
NOT_COMPARISONS = ["__getattribute__", "__getattr__", "__class__", "__reduce_ex__",
                   "__init_subclass__", "__subclasshook__", "__call__", "__dict__", "keys",
                   "exposed_echo", "__import__", ""]
HITS: list[str] = []  # local code that ran on a peer's behalf


class Canary:
    """A local object whose every hook records that it ran."""

    def __init__(self) -> None:
        self.secret = "canary-secret-value"

    def __call__(self, *args: Any) -> str:
        HITS.append("call")
        return "called"

    def __reduce_ex__(self, protocol: Any) -> Any:
        HITS.append("__reduce_ex__")
        return (str, ("pwned",))

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        HITS.append("__array__")
        raise RuntimeError("never")

    def __getstate__(self) -> Any:
        HITS.append("__getstate__")
        return {}

    def _private(self) -> str:
        HITS.append("_private")
        return "private"


def _is_denied(outcome: tuple[bool, Any]) -> bool:
    ok, value = outcome
    return not ok and isinstance(value, Decoded) and value.qualname.endswith(
        ("AccessDenied", "AttributeError"))


# -- a hostile server against a real client --------------------------------------------------


@pytest.fixture
def hostile() -> Iterator[tuple[Connection, RawPeer]]:
    """(victim, raw): a real client connection whose peer is spoken to by hand."""
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    serving = victim.serve_in_background()
    raw = RawPeer(right)
    HITS.clear()
    yield victim, raw
    victim.close()
    serving.stop(5)
    right.close()


def _hand_over(victim: Connection, raw: RawPeer, obj: Any) -> int:
    """The victim passes ``obj`` to the hostile peer (as an argument of a ping); the oid."""
    victim.async_request(Op.PING, obj)
    request = raw.recv_kind((Kind.REQUEST,))
    assert request[2] == Op.PING
    return request[3].oid


def test_client_root_exposes_nothing(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    root = raw.getroot()
    for name in DENIED:
        assert _is_denied(raw.request(Op.GETATTR, peerref(root), name)), name
        assert _is_denied(raw.request(Op.CALLATTR, peerref(root), name, [], None)), name
    assert HITS == []


def test_a_callback_can_be_called_and_nothing_else(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    canary = Canary()
    oid = _hand_over(victim, raw, canary)
    target = peerref(oid)
    for name in DENIED:
        assert _is_denied(raw.request(Op.GETATTR, target, name)), name
        assert _is_denied(raw.request(Op.SETATTR, target, name, 1)), name
        assert _is_denied(raw.request(Op.DELATTR, target, name)), name
        assert _is_denied(raw.request(Op.OINFO, target, name, 0)), name
        assert _is_denied(raw.request(Op.CHILDREN, target, [["attr", name]], 10)), name
    assert _is_denied(raw.request(Op.GETATTR, target, "secret"))
    assert _is_denied(raw.request(Op.CALLATTR, target, "__getattribute__", ["secret"], None))
    ok, value = raw.request(Op.OBTAIN, target)
    assert not ok  # a Canary cannot be copied by value
    assert HITS == []
    assert raw.request(Op.CALL, target, [], None) == (True, "called")  # what it is for
    assert HITS == ["call"]
    assert b"canary-secret-value" not in raw.bytes_received


def test_cve_2019_16328_comparison_handler_reaches_nothing(
        hostile: tuple[Connection, RawPeer]) -> None:
    """RPyC's comparison handler called any method the peer named."""
    victim, raw = hostile
    target = peerref(_hand_over(victim, raw, Canary()))
    for op in NOT_COMPARISONS:
        ok, value = raw.request(Op.CMP, target, "secret", op)
        assert not ok and value.qualname.endswith("AccessDenied"), op
    assert raw.request(Op.CMP, target, 1, "__eq__") == (True, False)
    assert HITS == []


def test_exception_naming_a_module_is_never_imported(
        hostile: tuple[Connection, RawPeer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    victim, raw = hostile
    marker = tmp_path / "imported"
    (tmp_path / "rk_hostile_marker.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, qualname in [("rk_hostile_marker", "Boom"), ("os", "system"),
                             ("rk_hostile_marker.sub", "X.Y"), ("builtins", "__import__"),
                             ("subprocess", "CalledProcessError")]:
        result = victim.async_request(Op.PING, None)
        request = raw.recv_kind((Kind.REQUEST,))
        raw.send([Kind.EXCEPTION, request[1], exc(module, qualname, "hostile")])
        with pytest.raises(rk.RemoteError) as info:
            _ = result.value
        assert info.value.remote_type == f"{module}.{qualname}" or module == "builtins"
    assert "rk_hostile_marker" not in sys.modules
    assert not marker.exists()


def test_a_peer_cannot_make_the_client_exit(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    for qualname in ("SystemExit", "GeneratorExit"):
        result = victim.async_request(Op.PING, None)
        request = raw.recv_kind((Kind.REQUEST,))
        raw.send([Kind.EXCEPTION, request[1], exc("builtins", qualname, "0")])
        with pytest.raises(Exception):  # noqa: B017 - anything an `except Exception` catches
            _ = result.value


def _netref_from(victim: Connection, raw: RawPeer, descriptor: list) -> Any:
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    raw.send([Kind.REPLY, request[1], ref(7, 1, descriptor)])
    return result.value


def _hooks_forwarded(raw: RawPeer, proxy: Any) -> list[str]:
    """Run numpy, pickle and copy on ``proxy``; the hook names that reached the peer."""
    import numpy

    answering = threading.Event()

    def answer() -> None:  # refuse whatever arrives, so nothing waits for a timeout
        while not answering.is_set():
            try:
                message = raw.recv_kind((Kind.REQUEST,), timeout=0.2)
            except (TimeoutError, OSError):
                continue
            raw.send([Kind.EXCEPTION, message[1], exc("builtins", "AttributeError", "no")])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    actions = [numpy.asarray, numpy.array, pickle.dumps, copy.copy, copy.deepcopy,
               lambda p: f"{p!s:>10}", lambda p: numpy.add(p, 1)]
    for action in actions:
        try:
            action(proxy)
        except Exception:  # noqa: BLE001 - refusing is fine; only what was sent matters
            pass
    answering.set()
    thread.join(5)
    names = []
    for message in raw.received:
        if message[0] == Kind.REQUEST:
            names.extend(str(item) for item in message[3:] if isinstance(item, str))
            names.extend(str(i) for item in message[3:] if isinstance(item, list)
                         for i in item if isinstance(i, str))
    return [name for name in names if name in LOCAL_DENIED]


def test_cve_2024_27758_numpy_hooks_are_not_forwarded(
        hostile: tuple[Connection, RawPeer]) -> None:
    """RPyC: numpy called ``__array__`` on a netref, and the server answered with code."""
    victim, raw = hostile
    descriptor = ["evil", "Evil", ["append", "__array__", "__reduce_ex__"],
                  ["__len__", "__add__", "__radd__", "__iter__", "__getitem__", "__array__"],
                  0, ""]
    proxy = _netref_from(victim, raw, descriptor)
    assert _hooks_forwarded(raw, proxy) == []
    assert HITS == []


def test_a_hostile_type_descriptor_cannot_install_hooks(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    descriptor = ["evil", "Evil2", ["_rk_conn", "__init__"],
                  ["__getattr__", "__getattribute__", "__setattr__", "__class__",
                   "__init_subclass__", "__dir__", "__instancecheck__", "__set_name__"], 0, ""]
    proxy = _netref_from(victim, raw, descriptor)
    cls = type(proxy)
    for name in ("__getattr__", "__getattribute__", "__setattr__", "__class__"):
        assert getattr(cls, name) is getattr(rk.BaseNetref, name), name
    assert _hooks_forwarded(raw, proxy) == []


# -- huge, deep and malformed messages -------------------------------------------------------


def _nested_frozensets(depth: int) -> ExtType:
    value: Any = ExtType(Ext.ELLIPSIS, b"")
    for _ in range(depth):
        value = ExtType(Ext.FROZENSET, packb([value]))
    return value


def _ndarray(dtype: str, shape: list, raw: bytes) -> ExtType:
    return ExtType(Ext.NDARRAY, packb([dtype, shape, False, raw]))


BAD_FRAMES = {
    "4 GiB announced": HEADER.pack(2**32 - 1),
    "over max_message_size": HEADER.pack((1 << 20) + 1),
    "not msgpack": frame(b"\xc1\xc1\xc1"),
    "truncated msgpack": frame(b"\x94\x01\x02"),
    "trailing bytes": frame(packb([Kind.REPLY, 1, None]) + b"\x00"),
    "not an array": frame(packb(5)),
    "unknown kind": frame(packb([99, 1, 2])),
    "deeply nested arrays": frame(b"\x91" * 200_000 + b"\xc0"),
    "deeply nested maps": frame(b"\x81\x00" * 100_000 + b"\xc0"),
    "nested ext, then an unknown ext": frame(packb([Kind.REPLY, 1, [
        _nested_frozensets(60), ExtType(99, b"")]])),
    "huge bigint": frame(packb([Kind.REPLY, 1, ExtType(Ext.BIGINT, b"9" * 100_000)])),
    "bigint garbage": frame(packb([Kind.REPLY, 1, ExtType(Ext.BIGINT, b"0x1")])),
    "unknown ext": frame(packb([Kind.REPLY, 1, ExtType(99, b"")])),
    "peerref unknown oid": frame(packb([Kind.REPLY, 1, peerref(123456)])),
    "peerref short": frame(packb([Kind.REPLY, 1, ExtType(Ext.PEERREF, b"\x01")])),
    "ref unknown type id": frame(packb([Kind.REPLY, 1, ref(1, 999)])),
    "ref negative oid": frame(packb([Kind.REPLY, 1, ExtType(Ext.REF, packb(
        [-6, 1, ["evil.module", "C", [], [], 0, ""]]))])),
    "ref bad descriptor": frame(packb([Kind.REPLY, 1, ExtType(Ext.REF, packb([1, 2, 3]))])),
    "ndarray object dtype": frame(packb([Kind.REPLY, 1, _ndarray("|O", [1], b"\0" * 8)])),
    "ndarray huge shape": frame(packb([Kind.REPLY, 1, _ndarray("<f8", [10**12], b"")])),
    "ndarray bad dtype": frame(packb([Kind.REPLY, 1, _ndarray("no such", [1], b"")])),
    "ndarray comma dtype": frame(packb([Kind.REPLY, 1, _ndarray(",i4", [1], b"")])),
    "reply with unhashable seq": frame(packb([Kind.REPLY, {"a": 1}, None])),
    "request with unhashable seq": frame(packb([Kind.REQUEST, [ExtType(Ext.LIST, packb([1]))],
                                               Op.PING, b"x"])),
    "exception of wrong shape": frame(packb([Kind.REPLY, 1, ExtType(Ext.EXC, packb([1]))])),
    "slice of wrong shape": frame(packb([Kind.REPLY, 1, ExtType(Ext.SLICE, packb([1]))])),
    "dict odd": frame(packb([Kind.REPLY, 1, ExtType(Ext.DICT, packb([1, 2, 3]))])),
    "complex short": frame(packb([Kind.REPLY, 1, ExtType(Ext.COMPLEX, b"\0")])),
    "unhashable item": frame(packb([Kind.REPLY, 1, ExtType(
        Ext.SET, packb([ExtType(Ext.LIST, packb([1]))]))])),
}


NESTED_EXT_CHILD = """
import socket, sys
sys.path.insert(0, {root!r})
import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.protocol.messages import Kind, Op
from remote_kernel.net.transports.sockets import SocketTransport
from tests.hardening.rawpeer import RawPeer, frame, packb
from tests.hardening.test_hostile_peer import _nested_frozensets
left, right = socket.socketpair()
victim = Connection(SocketTransport(left, "hostile"), rk.VoidService)
raw = RawPeer(right)
result = victim.async_request(Op.PING, None)
seq = raw.recv_kind((Kind.REQUEST,))[1]
raw.send_bytes(frame(packb([Kind.REPLY, seq, _nested_frozensets({depth})])))
try:
    _ = result.value
except (rk.ProtocolError, rk.ConnectionClosed) as exc:
    print("refused:", type(exc).__name__)
"""


def test_deeply_nested_ext_values_do_not_crash_the_process() -> None:
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    result = subprocess.run([sys.executable, "-c", NESTED_EXT_CHILD.format(root=root,
                                                                            depth=3000)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"the process died: exit {result.returncode}"
    assert "refused: ProtocolError" in result.stdout or "refused" in result.stdout




@pytest.mark.parametrize("name", [
    name for name in sorted(BAD_FRAMES)])
def test_malformed_input_closes_only_that_connection(name: str) -> None:
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService,
                        config={"max_message_size": 1 << 20}, name="hostile")
    raw = RawPeer(right)
    try:
        result = victim.async_request(Op.PING, b"x")
        seq = raw.recv_kind((Kind.REQUEST,))[1]
        assert seq == 1
        raw.send_bytes(BAD_FRAMES[name])
        started = time.monotonic()
        with pytest.raises((rk.ProtocolError, rk.ConnectionClosed, rk.RemoteError)):
            result.wait(5)
            _ = result.value
        assert time.monotonic() - started < 5
        assert victim.closed, "a malformed message must close the connection"
    finally:
        victim.close()
        right.close()


@pytest.mark.serial
def test_a_map_keyed_by_a_reference_is_refused_at_once(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    descriptor = ["evil", "Key", [], ["__eq__", "__hash__"], 0, ""]
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    started = time.monotonic()
    raw.send([Kind.REPLY, request[1], {ref(3, 1, descriptor): 1}])
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
        result.wait(3)
        _ = result.value
    assert time.monotonic() - started < 1.0
    assert not [m for m in raw.received if m[0] == Kind.REQUEST and m[2] == Op.HASH]


def test_unknown_opcode_is_refused_and_the_connection_stays(
        hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    ok, value = raw.request(250)
    assert not ok and "opcode" in value.message
    assert raw.request(Op.PING, b"still here") == (True, b"still here")


def test_notifications_cannot_touch_other_objects(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    oid = _hand_over(victim, raw, Canary())
    raw.send([Kind.NOTIFY, Op.DEL, [[oid + 1, 5], [oid + 2, 1]]])  # ids it never had
    raw.send([Kind.NOTIFY, Op.CANCEL, 123456])
    raw.send([Kind.NOTIFY, 77, 1, 2, 3])
    assert raw.request(Op.CALL, peerref(oid), [], None) == (True, "called")
    assert victim.local_object_count == 1
    raw.send([Kind.NOTIFY, Op.DEL, [[oid, 1]]])
    assert raw.request(Op.PING, b"sync") == (True, b"sync")
    assert victim.local_object_count == 0


@pytest.mark.parametrize("items", [[[0, -1]], ["x"], [[1, "1"]], 1, [[1, 2, 3]]], ids=repr)
def test_a_malformed_release_closes_the_connection(hostile: tuple[Connection, RawPeer],
                                                   items: Any) -> None:
    victim, raw = hostile
    oid = _hand_over(victim, raw, Canary())
    raw.send([Kind.NOTIFY, Op.DEL, items])
    with pytest.raises((EOFError, TimeoutError, ConnectionError)):
        raw.request(Op.PING, b"sync")
    assert victim.closed
    assert "release" in victim._close_reason and oid


# -- a hostile client against a real server --------------------------------------------------


class Vault(rk.Service):
    """A service with secrets next to what it exposes."""

    SECRET = "vault-secret"

    def __init__(self) -> None:
        self._secret = self.SECRET
        self.hooks: list[str] = []

    def exposed_echo(self, value: Any) -> Any:
        return value

    def exposed_box(self) -> Any:
        return Boxed(self.hooks)

    def exposed_hooks(self) -> tuple:
        return tuple(self.hooks)

    def exposed_call(self, fn: Any) -> Any:
        return fn()

    def private_method(self) -> str:
        return self._secret


class Boxed:
    def __init__(self, hooks: list[str]) -> None:
        self.hooks = hooks

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        self.hooks.append("__array__")
        return None

    def __reduce_ex__(self, protocol: Any) -> Any:
        self.hooks.append("__reduce_ex__")
        return (str, ("x",))

    def __len__(self) -> int:
        return 3


@pytest.fixture(scope="module")
def vault() -> Iterator[rk.Server]:
    with rk.Server(Vault) as server:
        yield server


@pytest.fixture
def intruder(vault: rk.Server) -> Iterator[Connection]:
    with rk.connect("127.0.0.1", vault.port, timeout=5) as conn:
        yield conn


def test_server_policy_denies_dunder_and_private_names(intruder: Connection) -> None:
    root = intruder.root
    method = intruder.sync_request(Op.GETATTR, root, "echo")
    for target in (root, method):
        for name in DENIED + ["private_method", "_secret", "SECRET"]:
            with pytest.raises(AttributeError):
                intruder.sync_request(Op.GETATTR, target, name)
            with pytest.raises(AttributeError):
                intruder.sync_request(Op.CALLATTR, target, name, (), None)
            with pytest.raises(AttributeError):
                intruder.sync_request(Op.OINFO, target, name, 0)
    for op in NOT_COMPARISONS:
        with pytest.raises(rk.AccessDenied):
            intruder.sync_request(Op.CMP, root, 1, op)
    with pytest.raises(rk.AccessDenied):
        intruder.sync_request(Op.SETATTR, root, "exposed_echo", None)
    with pytest.raises(rk.AccessDenied):
        intruder.sync_request(Op.DELATTR, root, "exposed_echo")
    with pytest.raises(rk.AccessDenied):
        intruder.sync_request(Op.CHILDREN, root, (("attr", "__init__"), ("attr", "__globals__")),
                              10)
    assert root.echo("ok") == "ok"


def test_server_hooks_are_not_called_for_a_client(intruder: Connection) -> None:
    import numpy

    box = intruder.root.box()
    array = numpy.asarray(box)
    assert array.dtype == object  # the netref itself, wrapped; no __array__ call
    with pytest.raises(TypeError):
        pickle.dumps(box)
    with pytest.raises(TypeError):
        copy.deepcopy(box)
    assert len(box) == 3
    assert intruder.root.hooks() == ()


def test_a_classic_server_cannot_reach_into_its_client(classic: Connection) -> None:
    """The server runs code of its own choosing against a callback the client passed; it
    reaches nothing but the call."""
    classic.execute(ATTACK)
    canary = Canary()
    HITS.clear()
    got = classic.namespace["attack"](canary, tuple(DENIED))
    assert tuple(got) == ("call",)
    assert HITS == ["call"]


ATTACK = '''
def attack(victim, names):
    from remote_kernel.protocol.messages import Op
    got = []
    conn = victim._rk_conn
    root = conn.root
    for name in names:
        for target in (victim, root):
            for op, args in ((Op.GETATTR, (name,)), (Op.CALLATTR, (name, (), None)),
                             (Op.CMP, (1, name)), (Op.OINFO, (name, 0)),
                             (Op.SETATTR, (name, 1))):
                try:
                    conn.sync_request(op, target, *args)
                    got.append((op, name))
                except Exception:
                    pass
    try:
        conn.sync_request(Op.CALL, victim, (), None)
        got.append("call")
    except Exception:
        pass
    return tuple(got)
'''


def test_handshake_rejects_garbage_before_authentication() -> None:
    with rk.Server(Vault, token="tok") as server:
        for payload in (b"\xff" * 64, HEADER.pack(2**31) + b"x",
                        frame(msgpack.packb({"nonce": b"short", "mac": b"x"})),
                        frame(msgpack.packb([1, 2, 3]))):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(payload)
                sock.settimeout(5)
                data = b""
                try:
                    while chunk := sock.recv(4096):
                        data += chunk
                except OSError:
                    pass
            assert b"ok" in data  # the hello, then {"ok": false}; then the server closed
        with rk.connect("127.0.0.1", server.port, token="tok", timeout=5) as conn:
            assert conn.root.echo(5) == 5

"""The kernel side of the JupyterLab panel (remote_kernel/comm.py), without a browser.

Comms are fakes that record what is sent; the registry is a fake for the bookkeeping and the
real one against a real classic server for the object browser.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from remote_kernel.ipython import panel
from remote_kernel.ipython.panel import PanelEndpoint

pytestmark = pytest.mark.timeout(60)


class FakeComm:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self._on_msg: Callable[[dict], None] | None = None
        self._on_close: Callable[[dict], None] | None = None

    def send(self, data: Any = None) -> None:
        json.dumps(data)  # what goes to the frontend must be plain JSON
        self.sent.append(data)

    def on_msg(self, callback: Callable[[dict], None]) -> None:
        self._on_msg = callback

    def on_close(self, callback: Callable[[dict], None]) -> None:
        self._on_close = callback

    def close(self) -> None:
        self.closed = True

    # What the frontend does.
    def request(self, action: str, request_id: int = 1, **args: Any) -> dict[str, Any]:
        assert self._on_msg is not None
        self._on_msg({"content": {"data": {"type": "request", "id": request_id,
                                           "action": action, "args": args}}})
        return self.reply(request_id)

    def reply(self, request_id: int) -> dict[str, Any]:
        replies = [m for m in self.sent if m["type"] == "reply" and m["id"] == request_id]
        assert len(replies) == 1, self.sent
        return replies[0]

    def snapshots(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "snapshot"]


class FakeEntry:
    def __init__(self, name: str, target: str) -> None:
        self.name = name
        self.target = target
        self.state = "open"
        self.conn: Any = object()
        self.latency: float | None = None

    def stats(self) -> dict[str, int]:
        return {"requests": 3, "bytes_in": 100, "bytes_out": 50}


class FakeRegistry:
    def __init__(self) -> None:
        self.entries: dict[str, FakeEntry] = {}
        self.current: str | None = None
        self.listeners: list[Callable[[], None]] = []
        self.calls: list[tuple] = []

    def changed(self) -> None:
        for fn in list(self.listeners):
            fn()

    def add_listener(self, fn: Callable[[], None]) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        self.listeners.remove(fn)

    def connect(self, target: str, name: str | None = None, token_file: str | None = None,
                service: str = "void") -> FakeEntry:
        self.calls.append(("connect", target, name, token_file))
        if target == "nowhere":
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        entry = FakeEntry(name or "remote", target)
        self.entries[entry.name] = entry
        self.current = entry.name
        self.changed()
        return entry

    def close(self, name: str) -> None:
        del self.entries[name]
        self.current = next(iter(self.entries), None)
        self.changed()

    def reconnect(self, name: str) -> FakeEntry:
        self.calls.append(("reconnect", name))
        return self.entries[name]

    def ping(self, name: str) -> float:
        entry = self.entries[name]
        if entry.state != "open":
            raise EOFError(f"connection {name!r} is {entry.state}")
        entry.latency = 0.002
        self.changed()
        return entry.latency


@pytest.fixture
def fake() -> tuple[FakeRegistry, PanelEndpoint, FakeComm]:
    registry = FakeRegistry()
    endpoint = PanelEndpoint(registry, user_ns={})
    registry.add_listener(endpoint.on_registry_change)
    comm = FakeComm()
    endpoint.attach(comm)
    return registry, endpoint, comm


def test_snapshot_describes_each_connection(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("127.0.0.1:9999", name="pi")
    snapshot = comm.snapshots()[-1]
    assert snapshot["version"] == panel.PROTOCOL_VERSION
    assert snapshot["current"] == "pi"
    (info,) = snapshot["connections"]
    assert info == {
        "name": "pi", "target": "127.0.0.1:9999", "state": "open", "since": None, "error": "",
        "latency": None,
        "stats": {"requests": 3, "bytes_in": 100, "bytes_out": 50},
        "root_label": "namespace", "code_root": "pi.namespace", "trusted": False,
        "running": None,
    }
    assert snapshot["groups"] == []


def test_snapshot_shows_groups_and_the_cell_running_on_each_connection(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("x", name="pi1")
    registry.connect("y", name="pi2")
    registry.groups = {"bench": ["pi1", "pi2"]}
    registry.entries["pi2"].running = {"count": 12, "code": "for i in range(3):"}
    registry.changed()
    snapshot = comm.snapshots()[-1]
    assert snapshot["groups"] == [{"name": "bench", "members": ["pi1", "pi2"]}]
    running = {c["name"]: c["running"] for c in snapshot["connections"]}
    assert running == {"pi1": None, "pi2": {"count": 12, "code": "for i in range(3):"}}


def test_discover_lists_advertised_servers_without_tokens(fake, monkeypatch) -> None:
    from remote_kernel.ipython import registry as registry_module
    from tests import discovery_stub as stub

    registry, endpoint, comm = fake
    stub.install(monkeypatch)
    monkeypatch.setenv("RK_DISCOVERY_SERVERS", stub.servers_env(
        stub.ServerInfo("bench-a", "192.168.1.20", 40001, True, "Lab")))
    reply = comm.request("discover", request_id=2)
    assert reply["result"] == {"available": True, "servers": [
        {"name": "bench-a", "host": "192.168.1.20", "port": 40001, "tls": True,
         "service": "Lab"}]}
    assert comm.request("discover", request_id=3, timeout=60)["error"] == \
        "timeout must be a number of seconds up to 5"
    monkeypatch.setattr(registry_module, "discovery_module", lambda: None)
    assert comm.request("discover", request_id=4)["result"] == {"available": False,
                                                                "servers": []}


def test_connect_action_replies_with_the_name_then_a_snapshot(fake) -> None:
    registry, endpoint, comm = fake
    reply = comm.request("connect", target=" lab ", token_file="/tmp/t", name="")
    assert reply == {"type": "reply", "id": 1, "ok": True, "result": {"name": "remote"}}
    assert registry.calls == [("connect", "lab", None, "/tmp/t")]
    assert endpoint.user_ns["remote"] is registry.entries["remote"].conn  # like %remote connect
    assert comm.snapshots()[-1]["connections"][0]["name"] == "remote"


def test_errors_become_replies_never_exceptions(fake) -> None:
    registry, endpoint, comm = fake
    reply = comm.request("connect", request_id=7, target="nowhere")
    assert reply["ok"] is False and reply["error_type"] == "ConnectionRefusedError"
    assert "refused" in reply["error"]
    assert comm.request("ping", request_id=8, name="ghost")["error"] == "no connection named 'ghost'"
    assert comm.request("teleport", request_id=9)["error"] == "unknown action 'teleport'"
    assert comm.request("connect", request_id=10)["error"] == "a target is required"
    registry.connect("x", name="pi")
    bad = comm.request("children", request_id=11, name="pi", path=[["call", "x"]])
    assert bad["error"] == "unknown path step kind 'call'"


def test_ping_reports_latency_and_a_lost_connection(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("x", name="pi")
    assert comm.request("ping", request_id=2, name="pi")["result"] == {"latency": 0.002}
    assert comm.snapshots()[-1]["connections"][0]["latency"] == 0.002
    registry.entries["pi"].state = "closed"
    registry.entries["pi"].error = "peer closed the connection"
    registry.changed()
    assert comm.snapshots()[-1]["connections"][0]["state"] == "closed"
    assert comm.snapshots()[-1]["connections"][0]["error"] == "peer closed the connection"
    failed = comm.request("ping", request_id=3, name="pi")
    assert failed["ok"] is False and "closed" in failed["error"]


def test_unchanged_snapshots_are_not_resent(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("x", name="pi")
    count = len(comm.snapshots())
    registry.changed()
    registry.changed()
    assert len(comm.snapshots()) == count
    comm.request("snapshot", request_id=4)  # an explicit ask is always answered
    assert len(comm.snapshots()) == count + 1


def test_disconnect_and_reconnect(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("x", name="pi")
    assert comm.request("reconnect", request_id=2, name="pi")["ok"]
    assert ("reconnect", "pi") in registry.calls
    assert comm.request("disconnect", request_id=3, name="pi")["ok"]
    assert comm.snapshots()[-1]["connections"] == []


def test_open_request_and_closed_comms(fake) -> None:
    registry, endpoint, comm = fake
    registry.connect("x", name="pi")
    probe = FakeComm()
    endpoint.attach(probe, {"type": "request", "id": 0, "action": "snapshot", "args": {}})
    assert probe.reply(0)["ok"] and probe.snapshots()[-1]["current"] == "pi"
    assert probe._on_close is not None
    probe._on_close({})
    assert probe not in endpoint.comms
    extra = [FakeComm() for _ in range(panel.MAX_COMMS)]
    for other in extra:
        endpoint.attach(other)
    assert comm.closed and comm not in endpoint.comms
    assert len(endpoint.comms) == panel.MAX_COMMS


def test_code_root_follows_the_notebook_binding() -> None:
    registry = FakeRegistry()
    entry = registry.connect("x", name="pi")
    user_ns: dict[str, Any] = {"pi": 3.14, "board": entry.conn}
    endpoint = PanelEndpoint(registry, user_ns=user_ns)
    assert endpoint.snapshot()["connections"][0]["code_root"] == "board.namespace"
    user_ns["pi"] = entry.conn
    assert endpoint.snapshot()["connections"][0]["code_root"] == "pi.namespace"


def test_files_lists_live_connection_files_without_tokens(fake, classic_server) -> None:
    registry, endpoint, comm = fake
    import remote_kernel.net.connfile as connfile

    original = connfile.available
    connfile.available = lambda: [{"name": "lab", "port": 1, "token": "secret", "file": "f"}]
    try:
        files = comm.request("files")["result"]["files"]
    finally:
        connfile.available = original
    assert files == [{"name": "lab", "port": 1, "file": "f"}]


def test_install_outside_a_kernel_does_nothing() -> None:
    class Shell:
        kernel = None

    assert panel.install(Shell()) is None
    panel.uninstall(Shell())


# The object browser against a real classic server --------------------------------------------


@pytest.fixture
def real(classic_server) -> Iterator[tuple[Any, PanelEndpoint, FakeComm]]:
    from remote_kernel.ipython.registry import ConnectionRegistry

    registry = ConnectionRegistry()
    registry.connect(str(classic_server.file), name="lab")
    entry = registry.entries["lab"]
    entry.conn.execute(
        "import math\n"
        "class Box:\n    '''A box of things.'''\n    def __init__(self):\n"
        "        self.size = 3\n        self.items = [1, 'two']\n"
        "    def open(self, force: bool = False) -> str:\n        '''Open the box.'''\n"
        "        return 'open'\n"
        "d = {'a': {'b': 1}, 7: 'seven'}\nbox = Box()\n")
    endpoint = PanelEndpoint(registry, user_ns={"lab": entry.conn})
    registry.add_listener(endpoint.on_registry_change)
    comm = FakeComm()
    endpoint.attach(comm)
    yield registry, endpoint, comm
    registry.close_all()


def _by_name(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {child["name"]: child for child in children}


def test_children_is_one_request_per_expansion(real) -> None:
    registry, endpoint, comm = real
    conn = registry.entries["lab"].conn
    comm.request("children", request_id=1, name="lab", path=[])  # resolves the namespace
    before = conn.stats["requests"]
    top = _by_name(comm.request("children", request_id=2, name="lab", path=[])["result"]["children"])
    assert conn.stats["requests"] == before + 1
    assert top["d"]["kind"] == "item" and top["d"]["expandable"]
    assert top["box"]["type"].endswith("Box")
    d = comm.request("children", request_id=3, name="lab", path=[["item", "d"]])["result"]
    keys = {child["key"] for child in d["children"]}
    assert keys == {"a", 7}
    a = comm.request("children", request_id=4, name="lab",
                     path=[["item", "d"], ["item", "a"]])["result"]["children"]
    assert [(c["name"], c["repr"]) for c in a] == [("b", "1")]
    attrs = _by_name(comm.request("children", request_id=5, name="lab",
                                  path=[["item", "box"]])["result"]["children"])
    assert {"size", "items", "open"} <= set(attrs)
    assert attrs["size"]["kind"] == "attr"
    assert conn.stats["requests"] == before + 4


def test_inspect_returns_the_documentation(real) -> None:
    registry, endpoint, comm = real
    info = comm.request("inspect", request_id=1, name="lab",
                        path=[["item", "box"], ["attr", "open"]])["result"]["info"]
    assert info["docstring"] == "Open the box."
    assert "force" in info["signature"]
    cls = comm.request("inspect", request_id=2, name="lab", path=[["item", "box"]])
    assert cls["result"]["info"]["docstring"] == "A box of things."
    missing = comm.request("inspect", request_id=3, name="lab", path=[["item", "nope"]])
    assert missing["ok"] is False and missing["error_type"] == "KeyError"


def test_real_ping_updates_latency_and_stats(real) -> None:
    registry, endpoint, comm = real
    latency = comm.request("ping", request_id=1, name="lab")["result"]["latency"]
    assert 0 < latency < 5
    info = comm.snapshots()[-1]["connections"][0]
    assert info["latency"] == latency and info["stats"]["requests"] > 0
    assert info["code_root"] == "lab.namespace"

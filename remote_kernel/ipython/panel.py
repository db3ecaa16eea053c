"""The channel between the kernel and the JupyterLab "Remote" panel (``labextension/``).

Theory of operation
-------------------
One comm target, ``remote_kernel.panel``, registered on both sides. ``install(shell)`` (run by
``%load_ext remote_kernel``) registers the kernel side, opens a comm to the frontend whose
open message carries a snapshot, and listens to the connection registry. A frontend that
attaches later (a page reload) opens a comm to the kernel itself and asks for a snapshot.

The kernel never waits for the frontend. Comm messages arrive on the shell channel, in order
with execute requests, so the panel's requests are served between cells; every handler here
only sends. Remote work done for the panel (ping, one ``CHILDREN`` request per expanded node,
an ``OINFO`` for documentation) has a timeout, so a dead peer cannot hang the kernel.

Messages (JSON, the comm's ``data``)::

    kernel -> frontend
      {"type": "snapshot", "version": 1, "current": NAME | null,
       "connections": [{"name", "target", "state", "error", "latency", "root_label", "code_root",
                        "trusted", "stats": {"requests", "bytes_in", "bytes_out"},
                        "running": {"count", "code"} | null}],
       "groups": [{"name", "members": [NAME, ...]}]}
      {"type": "reply", "id": N, "ok": true, "result": {...}}
      {"type": "reply", "id": N, "ok": false, "error": "message", "error_type": "ValueError"}

    frontend -> kernel: {"type": "request", "id": N, "action": ACTION, "args": {...}}
      snapshot    {}                                 -> {}            (a snapshot follows)
      files       {}                                 -> {"files": [live connection files]}
      discover    {"timeout"?}                       -> {"available": bool, "servers":
                                                         [{name, host, port, tls, service}]}
      connect     {"target", "token_file"?, "name"?} -> {"name": NAME}
      disconnect  {"name"}                           -> {}
      reconnect   {"name"}                           -> {}
      ping        {"name"}                           -> {"latency": seconds}
      children    {"name", "path", "limit"?}         -> {"children": [{name, kind, key, type,
                                                                       repr, expandable}]}
      inspect     {"name", "path"}                   -> {"info": {type_name, docstring, ...}}

A ``path`` is a list of ``[kind, key]`` steps below the connection's browser root (the
namespace of a classic connection, else its root), ``kind`` being ``"attr"`` or ``"item"``.
A snapshot is sent after every action and whenever the registry reports a change (only when
it differs from the last one sent). ``running`` is the notebook cell running on a connection
(its execution count and first line), set while a ``%%remote`` cell runs there; the snapshot
that says so is sent from the cell itself (the kernel is busy, but comm messages go out on
iopub at once). The TypeScript side of this is ``labextension/src/
protocol.ts`` and ``model.ts``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from remote_kernel.protocol.describe import json_safe

TARGET = "remote_kernel.panel"
PROTOCOL_VERSION = 1
REQUEST_TIMEOUT = 10.0  # seconds for one remote request made for the panel
DISCOVER_TIMEOUT = 1.5  # seconds the connect dialog listens for advertised servers (max 5)
MAX_CHILDREN = 1000
MAX_COMMS = 8  # comms of reloaded pages are never closed by the browser: keep the newest

log = logging.getLogger(__name__)


class CommLike(Protocol):
    """What we use of ``comm.base_comm.BaseComm`` (a fake in the tests)."""

    def send(self, data: Any = None) -> None: ...
    def on_msg(self, callback: Callable[[dict], None]) -> None: ...
    def on_close(self, callback: Callable[[dict], None]) -> None: ...
    def close(self) -> None: ...


class PanelError(Exception):
    """A request the panel sent that cannot be served (unknown connection, bad path)."""


class PanelEndpoint:
    """The kernel side of the panel: answers requests from ``registry`` and pushes snapshots.

    Knows nothing of ipykernel: comms are handed to ``attach``; ``install`` does the wiring.
    """

    def __init__(self, registry: Any, user_ns: dict[str, Any] | None = None,
                 request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.registry = registry
        self.user_ns = user_ns if user_ns is not None else {}
        self.request_timeout = request_timeout
        self.comms: list[CommLike] = []
        self._last_snapshot: str | None = None
        # name -> (conn, browser root netref, whether the peer is classic)
        self._roots: dict[str, tuple[Any, Any, bool]] = {}
        self._actions: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "snapshot": lambda args: {},
            "files": self._files,
            "discover": self._discover,
            "connect": self._connect,
            "disconnect": self._disconnect,
            "reconnect": self._reconnect,
            "ping": self._ping,
            "children": self._children,
            "inspect": self._inspect,
        }

    # Comms ---------------------------------------------------------------------------------

    def attach(self, comm: CommLike, open_data: Any = None) -> None:
        """Serve ``comm``; ``open_data`` is the request its open message carried, if any."""
        comm.on_msg(lambda msg: self.handle(comm, msg.get("content", {}).get("data")))
        comm.on_close(lambda msg: self.detach(comm))
        self.comms.append(comm)
        while len(self.comms) > MAX_COMMS:
            old = self.comms.pop(0)
            try:
                old.close()
            except Exception:  # pragma: no cover - a comm of a vanished page
                log.debug("closing an old panel comm failed", exc_info=True)
        if isinstance(open_data, dict) and open_data.get("type") == "request":
            self.handle(comm, open_data)

    def detach(self, comm: CommLike) -> None:
        if comm in self.comms:
            self.comms.remove(comm)

    def close(self) -> None:
        for comm in list(self.comms):
            try:
                comm.close()
            except Exception:  # pragma: no cover
                log.debug("closing a panel comm failed", exc_info=True)
        self.comms.clear()
        self._roots.clear()

    # Snapshots -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        entries = list(self.registry.entries.values())
        live = {entry.name for entry in entries}
        for name in list(self._roots):
            if name not in live:
                del self._roots[name]
        return {
            "type": "snapshot",
            "version": PROTOCOL_VERSION,
            "current": self.registry.current,
            "connections": [self._describe(entry) for entry in entries],
            "groups": [{"name": name, "members": list(members)}
                       for name, members in getattr(self.registry, "groups", {}).items()],
        }

    def _describe(self, entry: Any) -> dict[str, Any]:
        try:
            stats = dict(entry.stats())
        except Exception:
            stats = {}
        cached = self._roots.get(entry.name)
        # Until the first browse we guess a classic peer (what `serve --classic` gives).
        classic = cached[2] if cached is not None and cached[0] is entry.conn else True
        since = getattr(entry, "since", None)  # seconds in this state, for the panel
        return {
            "name": entry.name,
            "target": str(entry.target),
            "state": entry.state,
            "since": None if since is None else round(time.monotonic() - since, 1),
            "error": str(getattr(entry, "error", "") or "") if entry.state == "closed" else "",
            "latency": entry.latency,
            "stats": {key: int(stats.get(key) or 0) for key in ("requests", "bytes_in", "bytes_out")},
            "root_label": "namespace" if classic else "root",
            "code_root": self._code_root(entry, classic),
            "trusted": bool(getattr(entry, "trusted", False)),
            "running": getattr(entry, "running", None),
        }

    def _code_root(self, entry: Any, classic: bool) -> str:
        """Python code reaching the browser root, from the notebook's point of view."""
        attr = "namespace" if classic else "root"
        name = entry.name
        bound = self.user_ns.get(name)
        if name.isidentifier() and (bound is None or bound is entry.conn or bound is entry):
            return f"{name}.{attr}"
        for var, value in self.user_ns.items():
            if not var.startswith("_") and value is entry.conn and entry.conn is not None:
                return f"{var}.{attr}"
        return (f"__import__('remote_kernel.ipython.registry', fromlist=['get_registry'])"
                f".get_registry().entries[{name!r}].conn.{attr}")

    def broadcast(self, force: bool = False) -> None:
        """Send a snapshot to every comm if it changed since the last one (or ``force``)."""
        try:
            data = self.snapshot()
        except Exception:
            log.exception("remote_kernel panel: snapshot failed")
            return
        text = json.dumps(data, sort_keys=True, default=str)
        if text == self._last_snapshot and not force:
            return
        self._last_snapshot = text
        for comm in list(self.comms):
            self._send(comm, data)

    def on_registry_change(self) -> None:
        """The registry listener: entries or their states changed."""
        self.broadcast()

    # Requests ------------------------------------------------------------------------------

    def handle(self, comm: CommLike, data: Any) -> None:
        """Answer one request from the panel; never raises."""
        if not isinstance(data, dict) or data.get("type") != "request":
            return
        request_id = data.get("id")
        action = data.get("action")
        args = data.get("args") or {}
        handler = self._actions.get(action) if isinstance(action, str) else None
        try:
            if handler is None:
                raise PanelError(f"unknown action {action!r}")
            if not isinstance(args, dict):
                raise PanelError("args must be an object")
            result = handler(args)
            reply = {"type": "reply", "id": request_id, "ok": True, "result": json_safe(result)}
        except (Exception, KeyboardInterrupt) as exc:  # the panel always gets an answer
            reply = {"type": "reply", "id": request_id, "ok": False,
                     "error": _message(exc), "error_type": type(exc).__name__}
        self._send(comm, reply)
        if action in ("snapshot",):
            self.broadcast(force=True)
        elif action in ("connect", "disconnect", "reconnect", "ping", "children"):
            self.broadcast()

    def _send(self, comm: CommLike, data: dict[str, Any]) -> None:
        try:
            comm.send(data)
        except Exception:
            log.debug("remote_kernel panel: send failed; dropping the comm", exc_info=True)
            self.detach(comm)

    def _entry(self, args: dict[str, Any]) -> Any:
        name = args.get("name")
        entry = self.registry.entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise PanelError(f"no connection named {name!r}")
        return entry

    def _live_conn(self, entry: Any) -> Any:
        conn = entry.conn
        if conn is None or entry.state == "closed" or getattr(conn, "closed", False):
            raise PanelError(f"connection {entry.name!r} is {entry.state}")
        return conn

    def _files(self, args: dict[str, Any]) -> dict[str, Any]:
        from remote_kernel.net import connfile

        files = []
        for info in connfile.available():
            safe = {key: value for key, value in info.items() if "token" not in key.lower()}
            files.append(safe)
        return {"files": files}

    def _discover(self, args: dict[str, Any]) -> dict[str, Any]:
        """Servers advertised on the local network (never a token: none is announced)."""
        from remote_kernel.ipython.registry import discovery_module

        timeout = args.get("timeout", DISCOVER_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= 5:
            raise PanelError("timeout must be a number of seconds up to 5")
        discovery = discovery_module()
        if discovery is None:
            return {"available": False, "servers": []}
        servers = discovery.discover(float(timeout))
        return {"available": True, "servers": [
            {"name": server.name, "host": server.host, "port": server.port,
             "tls": bool(server.tls), "service": server.service} for server in servers]}

    def _connect(self, args: dict[str, Any]) -> dict[str, Any]:
        target = args.get("target")
        if not isinstance(target, str) or not target.strip():
            raise PanelError("a target is required")
        kwargs: dict[str, Any] = {}
        for key in ("name", "token_file"):
            value = args.get(key)
            if isinstance(value, str) and value.strip():
                kwargs[key] = value.strip()
        entry = self.registry.connect(target.strip(), **kwargs)
        self._bind(entry)
        return {"name": entry.name}

    def _bind(self, entry: Any) -> None:
        """Bind the connection to its name in the notebook, as ``%remote connect`` does."""
        if entry.name.isidentifier() and entry.conn is not None:
            self.user_ns[entry.name] = entry.conn

    def _disconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        self._roots.pop(entry.name, None)
        self.registry.close(entry.name)
        return {}

    def _reconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        self._roots.pop(entry.name, None)
        self._bind(self.registry.reconnect(entry.name))
        return {}

    def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        return {"latency": float(self.registry.ping(entry.name))}

    def _root(self, entry: Any) -> tuple[Any, Any]:
        """The connection and its browser root netref (the namespace of a classic peer, else
        its root), fetched once per connection."""
        conn = self._live_conn(entry)
        cached = self._roots.get(entry.name)
        if cached is not None and cached[0] is conn:
            return conn, cached[1]
        try:
            root, classic = conn.namespace, True
        except AttributeError:  # AccessDenied too: not a classic peer
            root, classic = conn.root, False
        self._roots[entry.name] = (conn, root, classic)
        return conn, root

    def _children(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        path = _path(args.get("path"))
        limit = args.get("limit", 200)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise PanelError("limit must be an integer")
        conn, root = self._root(entry)
        found = conn.children(root, path, max(1, min(limit, MAX_CHILDREN)),
                              timeout=self.request_timeout)
        return {"children": [dict(child) for child in found]}

    def _inspect(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self._entry(args)
        path = _path(args.get("path"))
        conn, obj = self._root(entry)
        attribute = None
        if path and path[-1][0] == "attr":
            attribute = path[-1][1]
            path = path[:-1]
        for kind, key in path:  # one round trip per step; fine for "show documentation"
            obj = getattr(obj, key) if kind == "attr" else obj[key]
        info = conn.object_info(obj, attribute, 0, timeout=self.request_timeout)
        return {"info": dict(info)}


def _path(raw: Any) -> tuple[tuple[str, Any], ...]:
    """A JSON path (list of [kind, key]) as the tuple of tuples CHILDREN expects."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise PanelError("path must be a list of [kind, key] steps")
    steps = []
    for step in raw:
        if not isinstance(step, (list, tuple)) or len(step) != 2:
            raise PanelError("path must be a list of [kind, key] steps")
        kind, key = step
        if kind not in ("attr", "item"):
            raise PanelError(f"unknown path step kind {kind!r}")
        if kind == "attr" and not isinstance(key, str):
            raise PanelError("an attribute step needs a string key")
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise PanelError(f"unsupported key {key!r}")
        steps.append((kind, key))
    return tuple(steps)


def _message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    first = text.splitlines()[0] if text else text
    return first[:500]


# Wiring into a kernel -----------------------------------------------------------------------

_endpoint: PanelEndpoint | None = None
_listener: Callable[[], None] | None = None


def install(shell: Any, registry: Any = None) -> PanelEndpoint | None:
    """Register the comm target and announce ourselves to the frontend (never waits for it).

    Does nothing outside a Jupyter kernel (a terminal IPython has no frontend to talk to).
    """
    global _endpoint, _listener
    if getattr(shell, "kernel", None) is None:
        return None
    import comm as comm_module

    if _endpoint is not None:
        uninstall(shell)
    if registry is None:
        from remote_kernel.ipython.registry import get_registry

        registry = get_registry()
    endpoint = PanelEndpoint(registry, user_ns=getattr(shell, "user_ns", None))
    manager = comm_module.get_comm_manager()
    manager.register_target(
        TARGET, lambda comm, msg: endpoint.attach(comm, msg.get("content", {}).get("data"))
    )
    _listener = endpoint.on_registry_change
    registry.add_listener(_listener)
    _endpoint = endpoint
    try:
        comm = comm_module.create_comm(target_name=TARGET, data=endpoint.snapshot())
        endpoint.attach(comm)
    except Exception:  # the frontend has no panel: nothing else to do
        log.debug("remote_kernel panel: opening the comm failed", exc_info=True)
    return endpoint


def uninstall(shell: Any) -> None:
    """Undo ``install``: drop the listener, the target and the comms."""
    global _endpoint, _listener
    endpoint, listener = _endpoint, _listener
    _endpoint = _listener = None
    if endpoint is None:
        return
    if listener is not None:
        try:
            endpoint.registry.remove_listener(listener)
        except Exception:
            log.debug("remote_kernel panel: removing the listener failed", exc_info=True)
    try:
        import comm as comm_module

        comm_module.get_comm_manager().unregister_target(TARGET, None)
    except Exception:
        log.debug("remote_kernel panel: unregistering the target failed", exc_info=True)
    endpoint.close()


def endpoint() -> PanelEndpoint | None:
    """The installed endpoint, if any (for tests and debugging)."""
    return _endpoint


__all__ = ["PROTOCOL_VERSION", "TARGET", "PanelEndpoint", "install", "uninstall"]

"""A remote_kernel server inside every worker of a Dask cluster, as one :class:`Group`.

    group = rk.Group.from_dask(client)        # or "tcp://scheduler:8786"
    group.eval("len(worker.data)")            # {"w0": 3, "w1": 2, ...}
    group.members                             # {"w0": DaskMember(...), ...}
    group.close()                             # stops the servers it started, nothing else

Theory of operation
-------------------
The client registers a :class:`RemoteKernelPlugin`, a Dask ``WorkerPlugin``. Dask pickles
it and sends it through its own comms (TLS when the cluster uses TLS) to every worker, and
the scheduler hands it to each worker that joins later. Its ``setup`` starts a
remote_kernel :class:`~remote_kernel.net.server.Server` in a daemon thread of the worker
process, bound to the worker's own host on a free port. The token is generated here and
travels only inside the plugin: it is never advertised and never written to disk. The
served namespace is the classic one plus ``worker``, the Dask ``Worker`` object.

The group learns each server's port with ``client.run`` (which reads the plugin's state in
the worker) and connects to it. A daemon thread polls ``client.scheduler_info()`` every
``poll`` seconds: a worker that joins becomes a member, one that leaves is marked gone (its
connection closed; a call that was running there fails for that member only, as a
``GroupError`` entry), and a worker that comes back under the same name (a nanny restart)
is the same member on a new connection. Members are named after the workers: ``w0, w1``
for the integer names of a ``LocalCluster``, the worker's own name otherwise.

``close()`` unregisters the plugin, whose ``teardown`` closes the servers it started.

Dask (``pip install 'remote_kernel[dask]'``) is imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from remote_kernel.core.connection import Connection
from remote_kernel.core.group import Member
from remote_kernel.core.service import ClassicService, VoidService
from remote_kernel.errors import ConnectionClosed, RemoteKernelError
from remote_kernel.net import group as _net_group
from remote_kernel.net.client import connect_tcp
from remote_kernel.net.server import Server

log = logging.getLogger("remote_kernel.net.dask")

POLL = 1.0  # seconds between two looks at the cluster's workers
CONNECT_TIMEOUT = 10.0
MISSING = "Dask is not installed: pip install 'remote_kernel[dask]' (dask[distributed])"

# In each worker process: the servers this module started, by (plugin name, worker address).
_servers: dict[tuple[str, str], Server] = {}
_servers_lock = threading.Lock()


def require_distributed() -> Any:
    """The ``distributed`` module, or ImportError with one line that says what to install."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return distributed


def member_name(worker_name: Any, address: str) -> str:
    """A short, stable member name for a worker: ``w0`` for the integer name 0, the name
    itself otherwise (non-word characters become ``_``), the address without one."""
    if isinstance(worker_name, int) or (isinstance(worker_name, str) and worker_name.isdigit()):
        return f"w{worker_name}"
    text = str(worker_name) if worker_name not in (None, "") else address
    text = re.sub(r"^\w+://", "", text) if text == address else text
    return re.sub(r"\W", "_", text) or "worker"


def worker_host(address: str) -> str:
    """The host a worker's server binds: the host of the worker's own address (loopback for
    in-process workers, whose address names no interface)."""
    distributed = require_distributed()
    if address.startswith("inproc://"):
        return "127.0.0.1"
    return str(distributed.comm.get_address_host(address))


class WorkerService(ClassicService):
    """The classic service with the Dask ``Worker`` as ``worker`` in its namespace."""

    dask_worker: ClassVar[Any] = None

    def __init__(self) -> None:
        super().__init__()
        self.exposed_namespace["worker"] = self.dask_worker

    @property
    def exposed_worker(self) -> Any:
        return self.dask_worker


def _plugin_base() -> type:
    try:
        from distributed.diagnostics.plugin import WorkerPlugin
    except ImportError:
        return object
    return WorkerPlugin


class RemoteKernelPlugin(_plugin_base()):  # type: ignore[misc]
    """Starts a remote_kernel server in each worker it is set up on (those named in
    ``workers``, or all), with the group's ``token``; ``teardown`` closes it."""

    idempotent = False

    def __init__(self, name: str, token: str, workers: Iterable[str] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.token = token
        self.workers = None if workers is None else frozenset(str(w) for w in workers)
        self.config = config

    def __repr__(self) -> str:  # the token stays out of logs
        return f"<RemoteKernelPlugin {self.name}>"

    def wanted(self, worker: Any) -> bool:
        return self.workers is None or worker.address in self.workers \
            or str(worker.name) in self.workers \
            or member_name(worker.name, worker.address) in self.workers

    def setup(self, worker: Any) -> None:
        if not self.wanted(worker):
            return
        service = type("WorkerService", (WorkerService,), {"dask_worker": worker})
        server = Server(service, host=worker_host(worker.address), port=0,
                        token=self.token, config=self.config)
        server.serve_in_background()
        with _servers_lock:
            old = _servers.pop((self.name, worker.address), None)
            _servers[(self.name, worker.address)] = server
        if old is not None:
            old.close()
        log.info("remote_kernel server for %s on %s", worker.address, server.address)

    def teardown(self, worker: Any) -> None:
        with _servers_lock:
            server = _servers.pop((self.name, worker.address), None)
        if server is not None:
            server.close()


def server_address(plugin_name: str, dask_worker: Any = None) -> tuple[str, int, int] | None:
    """Run in a worker by ``client.run``: where the plugin's server listens (host, port,
    the worker's pid), or None."""
    with _servers_lock:
        server = _servers.get((plugin_name, dask_worker.address))
    return None if server is None else (server.host, server.port, os.getpid())


def running_servers(plugin_name: str | None = None) -> list[str]:
    """Run in a worker: the addresses of this module's servers there (tests, diagnostics)."""
    with _servers_lock:
        return [server.address for (name, _), server in _servers.items()
                if plugin_name is None or name == plugin_name]


@dataclass
class DaskMember:
    """One worker of the group: its member name, Dask address and name, and state."""

    name: str
    address: str
    worker_name: Any
    state: str = "connected"  # or "gone"
    pid: int | None = None

    def __repr__(self) -> str:
        pid = f" pid {self.pid}" if self.pid else ""
        return f"<{self.name}: {self.address}{pid} {self.state}>"


class DaskGroup(_net_group.Group):
    """A :class:`remote_kernel.Group` whose members are the workers of a Dask cluster and
    follow it (see the module's doc). Built by ``rk.Group.from_dask``."""

    def __init__(self, client: Any, *, name: str | None = None,
                 workers: Iterable[str] | None = None, own_client: bool = False,
                 poll: float = POLL, timeout: float | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__((), timeout=timeout)
        self.client = client
        self.name = name or "dask"
        self.poll = poll
        self.config = config
        self.on_change: list[Callable[[DaskGroup], None]] = []
        self._own_client = own_client
        self._wanted = None if workers is None else frozenset(str(w) for w in workers)
        self._token = secrets.token_urlsafe(32)
        self._plugin_name = f"remote-kernel-{uuid.uuid4().hex[:12]}"
        self._info: dict[str, DaskMember] = {}  # every member seen, gone ones too
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        plugin = RemoteKernelPlugin(self._plugin_name, self._token, workers, config)
        register = getattr(client, "register_plugin", None) \
            or client.register_worker_plugin
        register(plugin, name=self._plugin_name)
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise
        if poll > 0:
            self._watcher = threading.Thread(target=self._watch, daemon=True,
                                             name=f"rk-dask-{self.name}")
            self._watcher.start()

    # -- members ---------------------------------------------------------------------------

    @property
    def members(self) -> dict[str, DaskMember]:
        """Every worker this group has had, by member name: ``state`` says which are gone."""
        return dict(sorted(self._info.items(), key=lambda item: _order(item[0])))

    @property
    def gone(self) -> list[str]:
        return [name for name, info in self._info.items() if info.state == "gone"]

    def connection(self, name: str) -> Connection:
        info = self._info.get(name)
        if name not in self._members and info is not None and info.state == "gone":
            raise ConnectionClosed(f"worker {name} ({info.address}) left the cluster")
        return super().connection(name)

    def run(self, tasks: Any, *, timeout: Any = _net_group._core._DEFAULT) -> Any:
        # A member that left between the caller's look at ``names`` and now fails alone.
        if self.closed:
            raise RemoteKernelError("this group is closed")
        live = {name: task for name, task in tasks.items() if name in self._members}
        left = {name: task for name, task in tasks.items() if name not in self._members}
        if any(name not in self._info for name in left):
            unknown = [name for name in left if name not in self._info]
            raise KeyError(f"not members of this group: {', '.join(unknown)}")
        merged = {name: (live.get(name) or (lambda name=name: self.connection(name)))
                  for name in tasks}
        return _net_group._core.fan_out(
            merged, interrupt=self._interrupt_member,
            timeout=self.timeout if timeout is _net_group._core._DEFAULT else timeout,
            max_workers=self.max_workers)

    def __repr__(self) -> str:
        state = " (closed)" if self.closed else ""
        gone = f", gone: {self.gone}" if self.gone else ""
        return f"<remote_kernel.Group {self.name} on Dask: {self.names}{gone}{state}>"

    # -- following the cluster ---------------------------------------------------------------

    def refresh(self) -> bool:
        """Look at the cluster's workers now: connect those that joined, mark those that
        left as gone. True if the membership changed."""
        with self._sync_lock:
            if self.closed:
                return False
            workers = self.client.scheduler_info()["workers"]
            changed = self._mark_gone(workers)
            joined = {address: info for address, info in workers.items()
                      if self._wants(address, info.get("name"))
                      and not self._is_member(address, info.get("name"))}
            if joined:
                changed |= self._connect_joined(joined)
        if changed:
            self._notify()
        return changed

    def _wants(self, address: str, worker_name: Any) -> bool:
        wanted = self._wanted
        return wanted is None or address in wanted or str(worker_name) in wanted \
            or member_name(worker_name, address) in wanted

    def _is_member(self, address: str, worker_name: Any) -> bool:
        info = self._info.get(member_name(worker_name, address))
        return info is not None and info.address == address and info.state != "gone"

    def _mark_gone(self, workers: dict[str, Any]) -> bool:
        changed = False
        members = dict(self._members)
        for name, info in self._info.items():
            if info.state != "gone" and info.address not in workers:
                info.state = "gone"
                member = members.pop(name, None)
                if member is not None:
                    member.conn.close(f"worker {name} ({info.address}) left the cluster")
                changed = True
        if changed:
            self._members = members  # replaced whole: a running call keeps its own view
        return changed

    def _connect_joined(self, joined: dict[str, Any]) -> bool:
        where = self.client.run(server_address, self._plugin_name,
                                workers=list(joined), on_error="return")
        members = dict(self._members)
        infos = dict(self._info)  # replaced whole, as members: readers never see it change
        changed = False
        for address, info in joined.items():
            found = where.get(address)
            if not isinstance(found, (tuple, list)):
                continue  # its plugin is not set up yet (or it failed): the next look
            name = member_name(info.get("name"), address)
            try:
                conn = connect_tcp(found[0], int(found[1]), service=VoidService,
                                   token=self._token, config=self.config,
                                   timeout=CONNECT_TIMEOUT)
            except (OSError, RemoteKernelError) as exc:
                log.warning("cannot connect to the server of worker %s: %s", address, exc)
                continue
            old = members.pop(name, None)
            if old is not None:
                old.conn.close("the worker was replaced")
            members[name] = Member(name, conn, owned=True)
            infos[name] = DaskMember(name, address, info.get("name"), "connected",
                                     int(found[2]) if len(found) > 2 else None)
            changed = True
        if changed:
            self._info = infos
            self._members = dict(sorted(members.items(), key=lambda item: _order(item[0])))
            if self.closed:  # closed while these connected: they go too
                self._close_owned(members.values())
        return changed

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
            except Exception as exc:  # the scheduler away for a moment: look again later
                if self.closed or self._stop.is_set():
                    return
                log.debug("cannot look at the Dask cluster: %s", exc)

    def _notify(self) -> None:
        for callback in list(self.on_change):
            try:
                callback(self)
            except Exception:
                log.exception("a Dask group listener failed")

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections, stop the servers this group started (by unregistering its
        plugin) and, if the group opened its client, the client; nothing else."""
        if self.closed:
            return
        self._stop.set()
        super().close()
        with contextlib.suppress(Exception):  # the cluster may be gone already
            self.client.unregister_worker_plugin(self._plugin_name)
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(self.poll + 5)
        self._notify()


def _order(name: str) -> tuple[int, Any]:
    """w2 before w10."""
    digits = name[1:]
    return (0, int(digits)) if name.startswith("w") and digits.isdigit() else (1, name)


def from_dask(client_or_address: Any, *, name: str | None = None,
              workers: Iterable[str] | None = None, poll: float = POLL,
              timeout: float | None = None, config: dict[str, Any] | None = None) -> DaskGroup:
    """A group of every worker of a Dask cluster (``workers``: only these addresses or
    names); ``client_or_address`` is a ``distributed.Client`` or a scheduler address."""
    distributed = require_distributed()
    own = not isinstance(client_or_address, distributed.Client)
    if own:
        if not isinstance(client_or_address, str):
            raise TypeError(f"from_dask takes a distributed.Client or a scheduler address, "
                            f"not {type(client_or_address).__name__}")
        client = distributed.Client(client_or_address, set_as_default=False)
    else:
        client = client_or_address
    try:
        return DaskGroup(client, name=name, workers=workers, own_client=own, poll=poll,
                         timeout=timeout, config=config)
    except BaseException:
        if own:
            client.close()
        raise


__all__ = ["DaskGroup", "DaskMember", "RemoteKernelPlugin", "WorkerService", "from_dask",
           "member_name", "require_distributed", "running_servers", "server_address"]

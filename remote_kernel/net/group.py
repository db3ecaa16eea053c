"""``remote_kernel.Group``: the core :class:`~remote_kernel.core.group.Group` that also
connects members given as targets, all at once.

    group = rk.Group(["pi1", "pi2", "10.0.0.7:4000", conn3])
    group.eval("socket.gethostname()")      # {"pi1": ..., "pi2": ..., ...}

A target is what ``rk.connect`` takes (a connection-file name or path, ``host:port``, a unix
socket path), ``ssh:user@host`` or ``subprocess``. Inside a notebook with ``%load_ext
remote_kernel``, the notebook's connection names are found first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from remote_kernel.core import group as _core
from remote_kernel.core.connection import Connection
from remote_kernel.core.group import Member
from remote_kernel.core.service import VoidService
from remote_kernel.net.targets import open_target, parse, read_token_file


def target_name(target: str) -> str:
    """The member name of a target: the connection file's name, the ssh host, or the
    target itself (``host:port``); the rule is ``Target.member_name`` (net/targets.py)."""
    return parse(target).member_name


def connection_name(conn: Connection) -> str:
    """A Connection's member name: its connection file's name if it was opened from one,
    else its peer (``host:port``, a socket path)."""
    path = getattr(conn, "connection_file", None)
    if isinstance(path, str):
        return target_name(path)
    return conn.peer


def connect_target(target: str, *, service: Any = VoidService, token: str | None = None,
                   tls: Any = None, config: Any = None, timeout: float = 10.0) -> Member:
    """Open a connection to ``target`` for a group (which then owns it)."""
    spec = parse(target)
    conn = open_target(spec, service=service, token=token, tls=tls, config=config,
                       timeout=timeout)
    return Member(spec.member_name, conn, owned=True)


class Group(_core.Group):
    """Several connections used as one; members are Connections, connection names (a
    notebook's, or connection files) or targets, connected concurrently.

    ``token``/``token_file``, ``tls``, ``config``, ``service`` and ``connect_timeout`` apply
    to the members this group connects; ``timeout`` is the default per call.
    """

    def __init__(self, members: Iterable[Any] | Mapping[str, Any] = (), *,
                 token: str | None = None, token_file: str | None = None, tls: Any = None,
                 config: Any = None, service: Any = VoidService, connect_timeout: float = 10.0,
                 timeout: float | None = None, max_workers: int = _core.MAX_WORKERS) -> None:
        if token_file is not None:
            token = read_token_file(token_file)

        def open_member(target: str) -> Member:
            return connect_target(target, service=service, token=token, tls=tls,
                                  config=config, timeout=connect_timeout)

        super().__init__(members, connect=open_member, timeout=timeout,
                         max_workers=max_workers)

    def name_of(self, conn: Connection) -> str:
        return connection_name(conn)

    @classmethod
    def from_dask(cls, client_or_scheduler_address: Any, *, name: str | None = None,
                  workers: Iterable[str] | None = None, **options: Any) -> Group:
        """A group of the workers of a Dask cluster, following it as workers come and go:
        see remote_kernel/net/dask.py (needs ``remote_kernel[dask]``)."""
        from remote_kernel.net.dask import from_dask

        return from_dask(client_or_scheduler_address, name=name, workers=workers, **options)


__all__ = ["Group", "connect_target", "connection_name", "target_name"]

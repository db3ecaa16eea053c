"""Display of netrefs: ONE request returns the whole mimebundle computed by the peer's
formatters; no probe ever leaves the notebook."""

from __future__ import annotations

from typing import Any

from remote_kernel.core.netref import BaseNetref, RemoteMethod

LOST = "<remote object, connection lost>"


def netref_bundle(obj: Any, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
    conn = obj._rk_conn
    if conn.closed:
        return {"text/plain": LOST}, {}
    try:
        data, metadata = obj._repr_mimebundle_(include, exclude)
    except Exception as exc:  # the peer went away during the request
        from remote_kernel.errors import ConnectionClosed

        if isinstance(exc, ConnectionClosed):
            return {"text/plain": LOST}, {}
        raise
    return dict(data), dict(metadata)


class _FormatWrapper:
    """Replaces ``shell.display_formatter.format`` while the extension is loaded."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, obj: Any, include: Any = None, exclude: Any = None) -> Any:
        if isinstance(obj, BaseNetref):
            return netref_bundle(obj, include, exclude)
        if isinstance(obj, RemoteMethod):
            return {"text/plain": repr(obj)}, {}
        return self.original(obj, include=include, exclude=exclude)


def install(shell: Any) -> None:
    formatter = shell.display_formatter
    if not isinstance(formatter.format, _FormatWrapper):
        formatter.format = _FormatWrapper(formatter.format)


def uninstall(shell: Any) -> None:
    formatter = shell.display_formatter
    if isinstance(formatter.format, _FormatWrapper):
        formatter.format = formatter.format.original

"""Display of netrefs: ONE request returns the whole mimebundle computed by the peer's
formatters; no probe ever leaves the notebook."""

from __future__ import annotations

import logging
from typing import Any

from remote_kernel.core.netref import BaseNetref, RemoteMethod
from remote_kernel.outputs.filter import filter_bundle_report

LOST = "<remote object, connection lost>"
log = logging.getLogger(__name__)


def untrusted_bundle(data: Any, metadata: Any, trusted: bool, peer: str) -> tuple[dict, dict]:
    """A peer's display bundle as the notebook may see it (filtered unless trusted)."""
    if trusted:
        return dict(data), dict(metadata or {})
    filtered = filter_bundle_report(data, metadata, trusted=False)
    if filtered.dropped:
        log.warning("output of %s: withheld %s (connect with --trust to allow)", peer,
                    ", ".join(f"{mime} ({why})" for mime, why in filtered.dropped.items()))
    return filtered.data, filtered.metadata


def netref_bundle(obj: Any, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
    """The bundle to show for a netref (one request). An object that displays itself
    (``_ipython_display_``) did so on the peer: its outputs are published here, each through
    the output filter, and, as IPython does for a local one, nothing else is shown."""
    conn = obj._rk_conn
    if conn.closed:
        return {"text/plain": LOST}, {}
    try:
        reply = conn.display(obj, include, exclude)
    except Exception as exc:  # the peer went away during the request
        from remote_kernel.errors import ConnectionClosed

        if isinstance(exc, ConnectionClosed):
            return {"text/plain": LOST}, {}
        raise
    data, metadata = reply[0], reply[1]
    if len(reply) == 4:
        from remote_kernel.ipython.sink import replay

        replay(reply[2], conn.trust_output, conn.peer)
        if reply[3] is True:
            return {}, {}
    return untrusted_bundle(data, metadata, conn.trust_output, conn.peer)


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

"""The exception tree of remote_kernel.

Every error the package raises on purpose is a :class:`RemoteKernelError`. Lower-layer
errors (``OSError``, ``msgpack`` exceptions) are translated at one boundary: the codec for
bad bytes, the transports for dead sockets.

An exception raised on the peer arrives as :class:`RemoteError`; for builtin exception types
the local instance is *also* of the original type, so ``except ValueError`` works.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

# How IPython shows our errors. The IPython layer (``remote_kernel.ipython.tracebacks``) sets
# these when it loads; until then the standard ``traceback`` text is used. A hook rather than
# an import, so this bottom module depends on nothing of the package.
render_remote_error: Callable[[Any], list[str]] | None = None
render_connection_closed: Callable[[Any], list[str]] | None = None


def _plain(exc: BaseException) -> list[str]:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()


class RemoteKernelError(Exception):
    """Base class of every error remote_kernel raises on purpose."""


class ProtocolError(RemoteKernelError):
    """The peer sent bytes that are not a valid message, or a message is too large."""


class ConnectionClosed(RemoteKernelError, EOFError):
    """The connection is closed or the peer went away; names the peer."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook: one line naming the peer, not a stack of plumbing."""
        if render_connection_closed is None:
            return [f"ConnectionClosed: {self}"]
        return render_connection_closed(self)


class RequestTimeout(RemoteKernelError, TimeoutError):
    """A request got no reply within its timeout; the connection stays usable."""


class AuthenticationError(RemoteKernelError):
    """The handshake failed: a wrong or missing token, or a TLS failure."""


class AccessDenied(RemoteKernelError, AttributeError):
    """The attribute policy refused an access (reads included)."""


class RemoteFrame(NamedTuple):
    """One frame of a remote traceback."""

    filename: str
    lineno: int
    function: str
    line: str


class RemoteError(RemoteKernelError):
    """An exception raised on the peer, re-raised here.

    ``remote_type`` is "module.QualName" of the original class, ``remote_traceback`` the
    peer's formatted traceback, ``remote_frames`` its frames and ``peer`` the peer's name.
    """

    remote_type: str = ""
    remote_traceback: str = ""
    remote_frames: list[RemoteFrame] = []  # noqa: RUF012 - replaced per instance
    peer: str = ""

    def __str__(self) -> str:
        message = getattr(self, "_rk_message", None)
        if message is not None:
            return message
        return super().__str__()

    def _render_traceback_(self) -> list[str]:
        """IPython calls this instead of formatting the local traceback."""
        if render_remote_error is None:
            remote = self.remote_traceback.rstrip().splitlines()
            return [*_plain(self)[:-1], f"---- remote traceback, from {self.peer} ----",
                    *remote]
        return render_remote_error(self)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


class GroupError(RemoteKernelError):
    """Some members of a group failed. ``errors`` maps each failed member's name to its
    exception (a remote error keeps its traceback); ``results`` keeps what the others
    returned."""

    def __init__(self, errors: Mapping[str, BaseException],
                 results: Mapping[str, Any] | None = None) -> None:
        self.errors: dict[str, BaseException] = dict(errors)
        self.results: dict[str, Any] = dict(results or {})
        # Members whose error was already shown on its own (a notebook's error outputs):
        # the traceback of this error then summarises them in its last line only.
        self.shown: set[str] = set()
        total = len(self.errors) + len(self.results)
        failed = "; ".join(f"{name}: {_first_line(exc)}" for name, exc in self.errors.items())
        super().__init__(f"{len(self.errors)} of {total} failed: {failed}")

    def __reduce__(self) -> Any:
        return type(self), (self.errors, self.results)

    def _render_traceback_(self) -> list[str]:
        """Each failure not shown yet, headed by its member's name, then the summary."""
        lines: list[str] = []
        for name, exc in self.errors.items():
            if name in self.shown:
                continue
            render = getattr(exc, "_render_traceback_", None)
            lines.append(f"[{name}]")
            lines.extend(render() if callable(render) else _plain(exc))
        lines.append(f"{type(self).__name__}: {self}")
        return lines


__all__ = [
    "AccessDenied",
    "AuthenticationError",
    "ConnectionClosed",
    "GroupError",
    "ProtocolError",
    "RemoteError",
    "RemoteFrame",
    "RemoteKernelError",
    "RequestTimeout",
]

"""The exception tree of remote_kernel.

Every error the package raises on purpose is a :class:`RemoteKernelError`. Lower-layer
errors (``OSError``, ``msgpack`` exceptions) are translated at one boundary: the codec for
bad bytes, the transports for dead sockets.

An exception raised on the peer arrives as :class:`RemoteError`; for builtin exception types
the local instance is *also* of the original type, so ``except ValueError`` works.
"""

from __future__ import annotations

from typing import NamedTuple


class RemoteKernelError(Exception):
    """Base class of every error remote_kernel raises on purpose."""


class ProtocolError(RemoteKernelError):
    """The peer sent bytes that are not a valid message, or a message is too large."""


class ConnectionClosed(RemoteKernelError, EOFError):
    """The connection is closed or the peer went away; names the peer."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook: one line naming the peer, not a stack of plumbing."""
        from remote_kernel._tbformat import render_connection_closed

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
        from remote_kernel._tbformat import render_remote_error

        return render_remote_error(self)


__all__ = [
    "AccessDenied",
    "AuthenticationError",
    "ConnectionClosed",
    "ProtocolError",
    "RemoteError",
    "RemoteFrame",
    "RemoteKernelError",
    "RequestTimeout",
]

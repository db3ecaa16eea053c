"""The exception tree of remote_kernel.

Every error the package raises on purpose is a :class:`RemoteKernelError`. Lower-layer
errors (``OSError``, ``msgpack`` exceptions) are translated at one boundary: the codec for
bad bytes, the transports for dead sockets.

An exception raised on the peer arrives as :class:`RemoteError` (built by
``protocol/exceptions.py``); where this side knows the original class it is *also* an
instance of that class, so ``except ValueError`` or ``except json.JSONDecodeError`` works.

How the remote frames reach every traceback printout
----------------------------------------------------
A received exception carries the peer's frames as data (``remote_frames``), not as Python
frames. Three printers show them:

- IPython and the notebook call ``_render_traceback_``. An error shows as the
  :class:`ErrorRendering` it carries says: the plain one (the standard traceback's text) by
  default; a connection stamps the errors it raises with the rendering of the hooks it was
  built with (``core/hooks.py``), which in a notebook is the IPython layer's
  (``ipython/tracebacks.py``: IPython's own formatters, so ``%xmode`` and ``%colors``
  apply, and the reconnect hint).
- The standard ``traceback`` module (``traceback.print_exc()``, ``logging.exception``,
  pytest, an uncaught exception) prints PEP 678 notes on Python 3.11+: each remote exception
  has one extra note, its remote frames, computed when first read (``__notes__`` is a
  property, so exceptions that are caught and never printed cost nothing). The cause chain
  stays the real one: ``__cause__`` and ``__context__`` are the peer's chained exceptions,
  each with its own note. The peer's own notes come first, ours last; ours is never sent on
  to another peer.
- Python 3.10 prints no notes. There the remote frames are hung, as concurrent.futures does,
  on a :class:`RemoteTraceback` set as ``__cause__`` of the *innermost* exception of the
  printed chain (the one printed first, which has no cause of its own), so the real chain
  above it is kept. Its text is the whole remote chain with its frames; the real chain then
  follows without them, so a chained error reads its exception lines twice on 3.10. (Notes
  or a chained object are the only two ways into that printout; one ``__cause__`` per
  exception cannot carry a frame list for each link of a chain without replacing it.)
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import traceback
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

HAS_NOTES = sys.version_info >= (3, 11)  # the traceback module prints __notes__
_hide_note: contextvars.ContextVar[bool] = contextvars.ContextVar("rk_hide_note", default=False)


def _plain(exc: BaseException) -> list[str]:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()


class ErrorRendering:
    """How an error of this package shows where ``_render_traceback_`` is used (IPython, the
    proxy kernel, a group's summary): these are the plain texts. A layer above subclasses it
    and gives it to the connections it builds (``ConnectionHooks(error_rendering=...)``);
    each error a connection raises carries its connection's (:func:`rendered_by`)."""

    def remote_error(self, exc: RemoteError) -> list[str]:
        """A peer's exception: its chain with the remote frames."""
        return _plain(exc)

    def connection_closed(self, exc: ConnectionClosed) -> list[str]:
        """One line naming the peer, not a stack of plumbing."""
        return [f"ConnectionClosed: {exc}"]

    def one_line(self, exc: BaseException) -> list[str]:
        """A Stop or a timeout while waiting for the peer: the frames of the wait say nothing."""
        return [f"{type(exc).__name__}: {exc}"]


PLAIN_RENDERING = ErrorRendering()

_E = TypeVar("_E", bound=BaseException)


def rendered_by(exc: _E, rendering: ErrorRendering) -> _E:
    """``exc``, which now shows as ``rendering`` says (returned, to be raised)."""
    if rendering is not PLAIN_RENDERING:
        exc.__dict__["_rk_rendering"] = rendering
    return exc


def _rendering(exc: BaseException) -> ErrorRendering:
    return exc.__dict__.get("_rk_rendering", PLAIN_RENDERING)


class RemoteKernelError(Exception):
    """Base class of every error remote_kernel raises on purpose."""


class ProtocolError(RemoteKernelError):
    """The peer sent bytes that are not a valid message, or a message is too large."""


class ConnectionClosed(RemoteKernelError, EOFError):
    """The connection is closed or the peer went away; names the peer."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook: one line naming the peer, not a stack of plumbing."""
        return _rendering(self).connection_closed(self)


class RequestTimeout(RemoteKernelError, TimeoutError):
    """A request got no reply within its timeout; the connection stays usable."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook: one line (the frames of the wait say nothing)."""
        return _one_line(self)


def _one_line(exc: BaseException) -> list[str]:
    return _rendering(exc).one_line(exc)


class AuthenticationError(RemoteKernelError):
    """The handshake failed: a wrong or missing token, or a TLS failure."""


class AccessDenied(RemoteKernelError, AttributeError):
    """The attribute policy refused an access (reads included)."""


class _FrameFields(NamedTuple):
    filename: str
    lineno: int
    function: str
    line: str


class RemoteFrame(_FrameFields):
    """One frame of a remote traceback: a ``(filename, lineno, function, line)`` tuple.

    Also says where it ran: ``where`` is "" for this process (a callback of ours that the
    peer called) or the name of the process it ran in ("127.0.0.1:40123"); ``side`` is that
    process's opaque id. ``context`` holds a few source lines around ``lineno``, the first
    being line ``context_start``. ``variables`` are ``(name, repr)`` pairs of the names on the
    frame's line, sent only while this side asked for them (``%xmode Verbose``), as
    ``arguments`` are the call's ("(a=3, b=0)").
    """

    where: str
    side: str
    context_start: int
    context: tuple[str, ...]
    variables: tuple[tuple[str, str], ...]
    arguments: str

    def __new__(cls, filename: str, lineno: int, function: str, line: str, where: str = "",
                side: str = "", context_start: int = 0, context: tuple[str, ...] = (),
                variables: tuple[tuple[str, str], ...] = (), arguments: str = "",
                ) -> RemoteFrame:
        frame = super().__new__(cls, filename, lineno, function, line)
        frame.where = where
        frame.side = side
        frame.context_start = context_start
        frame.context = context
        frame.variables = variables
        frame.arguments = arguments
        return frame


def where_label(where: str) -> str:
    """The label of a stretch of frames: "here" or "on 127.0.0.1:40123"."""
    return f"on {where}" if where else "here"


def format_remote_frames(frames: list[RemoteFrame], first_where: str | None = None) -> list[str]:
    """Frames as the traceback module prints them, outermost first, with a label line where
    the call crossed a connection (``first_where``: what the reader is taken to be on)."""
    lines: list[str] = []
    current = first_where
    for frame in frames:
        if frame.where != current:
            lines.append(f"  [{where_label(frame.where)}]\n")
            current = frame.where
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.function}\n')
        if frame.line:
            lines.append(f"    {frame.line.strip()}\n")
    return lines


@contextlib.contextmanager
def traceback_note_hidden() -> Iterator[None]:
    """Within this block ``__notes__`` of a remote exception leaves out the note with its
    remote frames: for a renderer that shows the frames itself."""
    token = _hide_note.set(True)
    try:
        yield
    finally:
        _hide_note.reset(token)


def chain_of(exc: BaseException, limit: int = 64) -> list[tuple[BaseException, str]]:
    """The exceptions the traceback module prints for ``exc``, innermost (printed first)
    first, each with how it leads to the next: "cause", "context" or "" for the last."""
    found: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(found) < limit:
        seen.add(id(current))
        found.append((current, link))
        cause = current.__cause__
        if cause is not None and not isinstance(cause, RemoteTraceback):
            current, link = cause, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    return found[::-1]


_CHAIN_TEXT = {
    "cause": "\nThe above exception was the direct cause of the following exception:\n\n",
    "context": "\nDuring handling of the above exception, another exception occurred:\n\n",
}


class RemoteError(RemoteKernelError):
    """An exception raised on the peer, re-raised here.

    ``remote_type`` is "module.QualName" of the original class ("builtins.ValueError"),
    ``remote_frames`` the peer's frames (outermost first, :class:`RemoteFrame`),
    ``remote_traceback`` their text as Python prints it (with the chain) and ``peer`` the
    peer's name. Attributes, PEP 678 notes, ``__cause__`` and ``__context__`` are the
    peer's.
    """

    remote_type: str = ""
    remote_frames: list[RemoteFrame] = []  # noqa: RUF012 - replaced per instance
    peer: str = ""

    def __str__(self) -> str:
        message = self.__dict__.get("_rk_message")
        if message is not None:
            return message
        return super().__str__()

    @property
    def remote_traceback(self) -> str:
        """The remote chain as the peer would print it, each crossing labelled."""
        text = self.__dict__.get("_rk_text")
        if text is None:
            parts: list[str] = []
            with traceback_note_hidden():
                for exc, link in chain_of(self):
                    parts.extend(_section(exc))
                    if link:
                        parts.append(_CHAIN_TEXT[link])
            text = self.__dict__["_rk_text"] = "".join(parts)
        return text

    @remote_traceback.setter
    def remote_traceback(self, text: str) -> None:
        self.__dict__["_rk_text"] = text

    @property
    def __notes__(self) -> list[str]:
        """The peer's notes, then (Python 3.11+) one note with the remote frames."""
        notes = self.__dict__.get("_rk_notes")
        if notes is None:
            notes = list(self.__dict__.get("_rk_remote_notes", ()))
            if HAS_NOTES and self.remote_frames:
                note = "".join(["Remote traceback (most recent call last):\n",
                                *format_remote_frames(self.remote_frames)]).rstrip("\n")
                self.__dict__["_rk_note"] = note
                notes.append(note)
            self.__dict__["_rk_notes"] = notes
        if _hide_note.get():
            ours = self.__dict__.get("_rk_note")
            return [note for note in notes if note is not ours]
        return notes

    @__notes__.setter
    def __notes__(self, notes: list[str]) -> None:
        self.__dict__["_rk_notes"] = notes

    @__notes__.deleter
    def __notes__(self) -> None:
        self.__dict__["_rk_notes"] = []

    def _render_traceback_(self) -> list[str]:
        """IPython calls this instead of formatting the local traceback."""
        return _rendering(self).remote_error(self)


def _section(exc: BaseException) -> list[str]:
    """One exception of a remote chain: its remote frames and its exception line."""
    lines: list[str] = []
    frames = getattr(exc, "remote_frames", None) or []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(format_remote_frames(frames))
    lines.extend(traceback.format_exception_only(type(exc), exc))
    return lines


class RemoteTraceback(Exception):
    """Python 3.10 only: the remote frames as a chained cause, for the traceback module
    (which prints no PEP 678 notes there). Set on the innermost exception of a chain."""

    def __init__(self, exc: RemoteError) -> None:
        super().__init__()
        self.exc = exc

    def __str__(self) -> str:
        return "\n" + self.exc.remote_traceback.rstrip("\n")


def mark_stop(exc: BaseException, peer: str,
              rendering: ErrorRendering = PLAIN_RENDERING) -> BaseException:
    """The user's own Ctrl-C (the Stop button) ended a wait on ``peer``: the request was
    cancelled there. In IPython it shows as one line, without the frames of the wait."""
    if not exc.args:
        exc.args = (f"the call to {peer} was interrupted; the connection stays usable",)
    exc._render_traceback_ = _StopLines(exc)  # type: ignore[attr-defined]
    return rendered_by(exc, rendering)


class _StopLines:
    """``_render_traceback_`` of a Stop: IPython uses it when the exception has one."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self) -> list[str]:
        return _one_line(self.exc)


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
    "PLAIN_RENDERING",
    "AccessDenied",
    "AuthenticationError",
    "ConnectionClosed",
    "ErrorRendering",
    "GroupError",
    "ProtocolError",
    "RemoteError",
    "RemoteFrame",
    "RemoteKernelError",
    "RequestTimeout",
]

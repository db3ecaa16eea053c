"""Text of a remote traceback, for IPython's ``_render_traceback_`` and for logs: the local
frames that led to the call, a separator naming the peer, then the peer's frames with their
source lines, colored the way IPython colors its own."""

from __future__ import annotations

from typing import Any

from remote_kernel import errors
from remote_kernel.protocol.frames import user_frames

RED = "\x1b[0;31m"
BOLD_RED = "\x1b[1;31m"
GREEN = "\x1b[0;32m"
CYAN = "\x1b[0;36m"
YELLOW = "\x1b[0;33m"
RESET = "\x1b[0m"


def _paint(code: str, text: str, color: bool) -> str:
    return f"{code}{text}{RESET}" if color else text


def _frame_lines(filename: str, lineno: int, function: str, line: str, color: bool) -> list[str]:
    lines = [f"File {_paint(GREEN, filename, color)}:{_paint(GREEN, str(lineno), color)}, "
             f"in {_paint(CYAN, function, color)}"]
    if line:
        lines.append(f"    {_paint(YELLOW, line.strip(), color)}")
    return lines


def local_frames(exc: BaseException) -> list[tuple[str, int, str, str]]:
    return user_frames(exc.__traceback__)


def render_remote_error(exc: Any, color: bool = True) -> list[str]:
    """Lines of a remote exception: local cell frames, the peer, remote frames, the error."""
    name = type(exc).__name__
    lines = [_paint(RED, "-" * 75, color),
             f"{_paint(BOLD_RED, name, color)}{' ' * max(1, 42 - len(name))}"
             f"Traceback (most recent call last)"]
    for frame in local_frames(exc):
        lines.extend(_frame_lines(*frame, color=color))
    lines.append(_paint(RED, f"---- remote traceback, from {exc.peer} ----", color))
    frames = list(getattr(exc, "remote_frames", []) or [])
    if frames:
        for frame in frames:
            lines.extend(_frame_lines(frame.filename, frame.lineno, frame.function, frame.line,
                                      color))
    elif exc.remote_traceback:
        lines.extend(exc.remote_traceback.rstrip().splitlines()[1:-1])
    remote_type = exc.remote_type or name
    lines.append(f"{_paint(BOLD_RED, remote_type, color)}: {exc}")
    return lines


def render_connection_closed(exc: Any, color: bool = True) -> list[str]:
    """One line for a dead connection, with what to do about it."""
    text = str(exc)
    hint = "" if "reconnect" in text else " (use %remote reconnect)"
    return [f"{_paint(BOLD_RED, 'ConnectionClosed', color)}: {text}{hint}"]


def install() -> None:
    """Make ``RemoteError``/``ConnectionClosed`` render through this module in IPython."""
    errors.render_remote_error = render_remote_error
    errors.render_connection_closed = render_connection_closed

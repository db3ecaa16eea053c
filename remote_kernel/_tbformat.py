"""Text of a remote traceback, for IPython's ``_render_traceback_`` and for logs."""

from __future__ import annotations

from typing import Any

RED = "\x1b[31m"
GREEN = "\x1b[32m"
CYAN = "\x1b[36m"
BOLD = "\x1b[1m"
RESET = "\x1b[0m"


def render_remote_error(exc: Any, color: bool = True) -> list[str]:
    """Lines of a remote exception: the remote frames with their source, then the error."""
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if color else text

    lines = [paint(RED + BOLD, f"Remote traceback (most recent call last), from {exc.peer}:")]
    frames = list(getattr(exc, "remote_frames", []) or [])
    if frames:
        for frame in frames:
            lines.append(f"  File {paint(GREEN, repr(frame.filename))}, line "
                         f"{paint(GREEN, str(frame.lineno))}, in {paint(CYAN, frame.function)}")
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
    elif exc.remote_traceback:
        lines.extend(exc.remote_traceback.rstrip().splitlines())
    name = exc.remote_type or type(exc).__name__
    lines.append(f"{paint(RED + BOLD, name)}: {exc}")
    return lines

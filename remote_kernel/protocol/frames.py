"""Which traceback frames are machinery, left out of the tracebacks a user reads.

Matched by the frame's module (``__name__`` of its globals), never by path: the demo and any
user code installed next to the package keep their frames, on every platform.

``SIDE`` names this process in the frames it sends, so a frame that comes back through a
chain of callbacks is known to have run here. It is random: it says nothing about the host.
"""

from __future__ import annotations

import linecache
import os
import traceback
from types import TracebackType

from remote_kernel.protocol.variables import call_arguments, line_variables

# remote_kernel's own plumbing, and the hosts' (IPython's run_code, ipykernel's dispatch).
MACHINERY_PACKAGES = ("remote_kernel", "IPython", "ipykernel", "tornado", "asyncio")
USER_PACKAGES = ("remote_kernel.demo",)  # shipped with the package, but user-level code

Frame = tuple[str, int, str, str]  # filename, lineno, function, source line
# ... + first line, context, the (name, repr) pairs of the line and the call's arguments
# (variables.py), or () and ""
SourceFrame = tuple[str, int, str, str, int, tuple[str, ...], tuple[tuple[str, str], ...], str]
CONTEXT_BEFORE, CONTEXT_AFTER = 2, 2  # source lines sent around each frame's line
MAX_LINE = 400  # characters of one source line

SIDE = os.urandom(8).hex()


def _new_side() -> None:
    global SIDE
    SIDE = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_side)  # a forked child is another process


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_machinery(module: str | None) -> bool:
    """True for a frame of one of ``MACHINERY_PACKAGES`` (but not ``USER_PACKAGES``)."""
    if not module:
        return False
    return _within(module, MACHINERY_PACKAGES) and not _within(module, USER_PACKAGES)


def user_tracebacks(tb: TracebackType | None) -> list[TracebackType]:
    """The entries of ``tb`` whose frames are not machinery, outermost first."""
    return [entry for entry in _walk(tb)
            if not is_machinery(entry.tb_frame.f_globals.get("__name__"))]


def _walk(tb: TracebackType | None) -> list[TracebackType]:
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return entries


def user_frames(tb: TracebackType | None) -> list[Frame]:
    """The frames of ``tb`` that are not machinery, outermost first."""
    frames: list[Frame] = []
    for frame, lineno in traceback.walk_tb(tb):
        if is_machinery(frame.f_globals.get("__name__")):
            continue
        code = frame.f_code
        line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
        frames.append((code.co_filename, lineno, code.co_name, line))
    return frames


def user_frames_with_source(tb: TracebackType | None,
                            with_variables: bool = False) -> list[SourceFrame]:
    """``user_frames`` plus a few source lines around each line, for renderers that show
    context (IPython's ``%xmode Context``), and with ``with_variables`` the variables of
    each line (``%xmode Verbose``)."""
    frames: list[SourceFrame] = []
    for entry in user_tracebacks(tb):
        frame, lineno = entry.tb_frame, entry.tb_lineno
        code = frame.f_code
        lines = linecache.getlines(code.co_filename, frame.f_globals)
        line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        first = max(1, lineno - CONTEXT_BEFORE)
        context = tuple(text.rstrip("\r\n")[:MAX_LINE]
                        for text in lines[first - 1:lineno + CONTEXT_AFTER]) if line else ()
        variables = line_variables(frame, line) if with_variables and line else ()
        arguments = call_arguments(frame) if with_variables else ""
        frames.append((code.co_filename, lineno, code.co_name, line[:MAX_LINE], first, context,
                       variables, arguments))
    return frames

"""Which traceback frames are machinery, left out of the tracebacks a user reads.

Matched by the frame's module (``__name__`` of its globals), never by path: the demo and any
user code installed next to the package keep their frames, on every platform.
"""

from __future__ import annotations

import linecache
import traceback
from types import TracebackType

# remote_kernel's own plumbing, and the hosts' (IPython's run_code, ipykernel's dispatch).
MACHINERY_PACKAGES = ("remote_kernel", "IPython", "ipykernel", "tornado", "asyncio")
USER_PACKAGES = ("remote_kernel.demo",)  # shipped with the package, but user-level code

Frame = tuple[str, int, str, str]  # filename, lineno, function, source line


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def is_machinery(module: str | None) -> bool:
    """True for a frame of one of ``MACHINERY_PACKAGES`` (but not ``USER_PACKAGES``)."""
    if not module:
        return False
    return _within(module, MACHINERY_PACKAGES) and not _within(module, USER_PACKAGES)


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

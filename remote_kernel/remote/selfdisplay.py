"""The reply to a peer's display request, for objects that display themselves.

IPython shows an object whose class defines ``_ipython_display_`` by calling that method,
which publishes outputs itself (``display(...)``, often several, sometimes with ``print``)
and nothing else is shown. So that a netref of such an object shows in the notebook what the
object would show there, the method runs here, inside the cell interpreter's output capture
(``interpreter.capture``: ``display``, ``print``, ``clear_output``), and the outputs it made
go back in order in the one reply; the notebook puts each through its output filter.

The reply is ``(data, metadata)`` for any other object (``describe.mimebundle``), and
``(data, metadata, outputs, handled)`` for one that displays itself: ``outputs`` is a list of
``("stream", name, text)``, ``("display", data, metadata, display_id, update)`` and
``("clear_output", wait)``; ``handled`` is False when the method failed, and ``data`` is then
what to show instead (its repr), as IPython falls back to the other formatters. The
``(data, metadata)`` of a handled reply is the repr, for a peer that shows only a bundle.

Without IPython here the method still runs: ``display`` is the capture's own (the cell
builtin, no IPython needed), and a method that imports IPython fails into the repr. A
``display`` bound from ``IPython.display`` before the capture started (a module's top-level
import) is IPython's, which without an IPython shell in this process prints the repr; that
text arrives as stream output.
"""

from __future__ import annotations

import traceback
from typing import Any

from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import json_safe, mimebundle, safe_repr

MAX_OUTPUTS = 1000  # outputs kept from one display; past it, one line says they were cut


class _Outputs:
    """A cell sink (what the interpreter's capture calls) that keeps each output in order."""

    def __init__(self) -> None:
        self.items: list[tuple] = []
        self.cut = 0

    def _keep(self, item: tuple) -> None:
        if len(self.items) < MAX_OUTPUTS:
            self.items.append(item)
        else:
            self.cut += 1

    def stream(self, name: str, text: str) -> None:
        self._keep(("stream", "stderr" if name == "stderr" else "stdout", str(text)))

    def display(self, data: Any, metadata: Any, display_id: Any = None,
                update: Any = False) -> None:
        self._keep(("display", json_safe(_unwrap(data)), json_safe(_unwrap(metadata)),
                    None if display_id is None else str(display_id), update is True))

    def clear_output(self, wait: bool = False) -> None:
        self._keep(("clear_output", bool(wait)))

    def page(self, data: Any, start: int = 0) -> None:
        self.display(data, {})

    def result(self, data: Any, metadata: Any, count: int) -> None:
        self.display(data, metadata)

    def finished(self) -> list[tuple]:
        if self.cut:
            self.items.append(("stream", "stderr", f"[{self.cut} more outputs not sent]\n"))
        return self.items


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, ByValue) else value


def display_method(obj: Any) -> Any:
    """``obj._ipython_display_`` as IPython finds it (instances only, and not on an object
    that claims every attribute), or None."""
    if isinstance(obj, type):
        return None
    try:
        method = getattr(obj, "_ipython_display_", None)
        if not callable(method):
            return None
        if callable(getattr(obj, "_ipython_canary_method_should_not_exist_", None)):
            return None
    except Exception:
        return None
    return method


def display_reply(obj: Any, include: Any = None, exclude: Any = None) -> ByValue:
    """What a display request for ``obj`` answers (see the module docstring)."""
    method = display_method(obj)
    if method is None:
        return ByValue(mimebundle(obj, include, exclude))
    from remote_kernel.remote.interpreter import capture

    outputs = _Outputs()
    handled = True
    try:
        with capture(outputs):
            method()
    except Exception as exc:
        handled = False
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
        outputs.stream("stderr", "".join(lines))
    return ByValue(({"text/plain": safe_repr(obj)}, {}, outputs.finished(), handled))

"""Completion, inspection and ``is_complete`` for a cell interpreter
(:class:`~remote_kernel.remote.interpreter.Interpreter`): IPython's own where IPython is
installed here, simple ones from the namespace where it is not."""

from __future__ import annotations

import builtins
import codeop
import re
from collections.abc import Callable
from typing import Any

from remote_kernel.protocol.boxing import ByValue
from remote_kernel.protocol.describe import object_info
from remote_kernel.remote import ipyshell


class Introspection:
    """The introspection requests of an interpreter over ``namespace``."""

    namespace: dict[str, Any]
    _ipython_shell: Callable[[], Any]  # the interpreter's IPython shell, made when needed

    def exposed_complete(self, code: str, cursor_pos: int | None = None) -> ByValue:
        """Completions at ``cursor_pos`` from this namespace: {matches, cursor_start,
        cursor_end}."""
        if cursor_pos is None:
            cursor_pos = len(code)
        found = self._ipython_completions(code, cursor_pos)
        if found is not None:
            return ByValue(found)
        before = code[:cursor_pos]
        match = re.search(r"[A-Za-z_][\w.]*$", before)
        token = match.group(0) if match else ""
        start = cursor_pos - len(token)
        if "." in token:
            base, _, prefix = token.rpartition(".")
            try:
                obj = eval(base, self.namespace)  # noqa: S307 - the user's own namespace
            except Exception:
                return ByValue({"matches": [], "cursor_start": start,
                                "cursor_end": cursor_pos})
            names = sorted(n for n in dir(obj) if n.startswith(prefix)
                           and (prefix.startswith("_") or not n.startswith("_")))
            matches = [f"{base}.{name}" for name in names]
        else:
            import keyword

            pool = set(self.namespace) | set(dir(builtins)) | set(keyword.kwlist)
            matches = sorted(n for n in pool if n.startswith(token)
                             and (token.startswith("_") or not n.startswith("_")))
        return ByValue({"matches": matches, "cursor_start": start, "cursor_end": cursor_pos})

    def _ipython_completions(self, code: str, cursor_pos: int) -> dict[str, Any] | None:
        """IPython's own completions here; None where IPython is not installed."""
        if ipyshell.transformer() is None:
            return None
        try:
            return ipyshell.completions(self._ipython_shell(), code, cursor_pos)
        except Exception:  # never fail a completion: the simple one answers instead
            return None

    def exposed_inspect(self, code: str, cursor_pos: int | None = None,
                        detail_level: int = 0) -> ByValue | None:
        """Object info of the name at the cursor, or None when nothing is found there."""
        if cursor_pos is None:
            cursor_pos = len(code)
        line_start = code.rfind("\n", 0, cursor_pos) + 1
        line_end = code.find("\n", cursor_pos)
        line = code[line_start: len(code) if line_end < 0 else line_end]
        column = cursor_pos - line_start
        name = ""
        for found in re.finditer(r"[A-Za-z_][\w.]*", line):
            if found.start() <= column <= found.end():
                name = found.group(0).rstrip(".")
                break
        if not name:
            calls = re.findall(r"([A-Za-z_][\w.]*)\s*\($", line[:column])
            name = calls[-1] if calls else ""
        if not name:
            return None
        try:
            obj = eval(name, self.namespace)  # noqa: S307
        except Exception:
            return None
        info = object_info(obj, detail_level)
        info["name"] = name
        return ByValue(info)

    def exposed_is_complete(self, code: str) -> ByValue:
        manager = ipyshell.transformer()  # None without IPython here
        if manager is not None:
            status, indent = manager.check_complete(code)
            return ByValue({"status": status, "indent": " " * (indent or 0)})
        try:
            result = codeop.compile_command(code, "<cell>", "exec")
        except (SyntaxError, OverflowError, ValueError):
            return ByValue({"status": "invalid", "indent": ""})
        return ByValue({"status": "complete" if result is not None else "incomplete",
                        "indent": ""})

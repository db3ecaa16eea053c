"""IPython syntax in remote cells: the remote IPython's own input transformation
(``TransformerManager``: ``%magic``, ``%%cell magic``, ``!shell``, ``obj?``) and an
``InteractiveShell`` that runs the magics over the interpreter's namespace.

One shell per :class:`~remote_kernel.remote.interpreter.Interpreter`, made when a cell first
needs it (its transformed code calls ``get_ipython()``). It is not IPython's global instance
(a server holds one interpreter per connection), it leaves this process's ``__main__`` alone,
writes no history file, and runs no cells itself: the interpreter executes the transformed
code, with the shell's ``pre_execute``/``post_execute`` events around it (so
``%matplotlib inline`` shows figures at the end of the cell, as in a kernel). Like any IPython
shell it adds ``In``, ``Out``, ``get_ipython``, ``exit`` and ``quit`` to the namespace (hidden
from ``%who``). Without IPython on this side, a cell that uses its syntax fails with a
``SyntaxError`` that says what to install.
"""

from __future__ import annotations

import re
from typing import Any

_IPYTHON_SYNTAX = re.compile(r"^\s*(?:%|!|\?)|\?\s*$|^[^#'\"]*=\s*[%!]", re.MULTILINE)


def transformer() -> Any | None:
    """IPython's input transformer, or None when IPython is not importable here."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return None
    return TransformerManager()


def without_ipython(error: SyntaxError, code: str, host: str) -> SyntaxError | None:
    """The error to raise instead of ``error`` when ``code`` uses IPython syntax and IPython
    is not installed here; None when the syntax error is an ordinary one."""
    found = _IPYTHON_SYNTAX.search(code)
    if found is None:
        return None
    lineno = code.count("\n", 0, found.start()) + 1
    line = code.splitlines()[lineno - 1] if code.splitlines() else ""
    return SyntaxError(f"IPython syntax ({line.strip()[:40]!r}) needs IPython on the remote "
                       f"interpreter ({host}): install it there with `pip install ipython`",
                       (error.filename, lineno, 1, line + "\n"))


def make_shell(namespace: dict[str, Any]) -> Any:
    """An IPython shell whose user namespace is ``namespace`` (see the module docstring)."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class RemoteShell(InteractiveShell):
        """IPython's shell for one remote interpreter: magics, ``!`` and inspection."""

        def init_sys_modules(self) -> None:
            """Leave ``sys.modules['__main__']`` to the server."""

        def init_virtualenv(self) -> None:
            """No virtualenv warnings in a cell's output."""

        def enable_gui(self, gui: Any = None) -> None:
            if gui not in (None, "inline"):
                from IPython.core.error import UsageError

                raise UsageError(f"a remote interpreter has no {gui} event loop; "
                                 f"use %matplotlib inline")

    config = Config()
    config.HistoryManager.enabled = False
    inputs, outputs = namespace.get("In"), namespace.get("Out")  # (remember_input)
    shell = RemoteShell(config=config, user_ns=namespace)
    # The shell starts In and Out anew: the cells before it keep their numbers.
    if isinstance(inputs, list) and namespace.get("In") is not inputs:
        namespace["In"].extend(inputs[1:])
    if isinstance(outputs, dict) and namespace.get("Out") is not outputs:
        namespace["Out"].update(outputs)
    return shell


def needs_shell(source: str) -> bool:
    return "get_ipython" in source


def completions(shell: Any, code: str, cursor_pos: int) -> dict[str, Any]:
    """What IPython's completer offers at ``cursor_pos`` (dict keys, magics, paths, modules,
    attributes), as in a local notebook: {matches, cursor_start, cursor_end}."""
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        found = list(shell.Completer.completions(code, cursor_pos))
    if not found:
        return {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos}
    start = min(c.start for c in found)
    end = max(c.end for c in found)
    matches: list[str] = []
    for completion in found:  # each widened to the common span, as ipykernel does
        text = code[start:completion.start] + completion.text + code[completion.end:end]
        if text not in matches:
            matches.append(text)
    return {"matches": matches, "cursor_start": start, "cursor_end": end}


def remember_input(namespace: dict[str, Any], count: int, code: str) -> None:
    """In[N], _iN, _i00 (this cell) and _i, _ii, _iii (the three before), as IPython keeps
    them."""
    namespace.setdefault("In", [""]).append(code)
    get = namespace.get
    namespace["_iii"], namespace["_ii"], namespace["_i"] = get("_ii", ""), get("_i", ""), \
        get("_i00", "")
    namespace["_i00"] = namespace[f"_i{count}"] = code


def remember_output(namespace: dict[str, Any], count: int, value: Any) -> None:
    """Out[N] and _N of a cell's result, as IPython keeps them."""
    namespace.setdefault("Out", {})[count] = namespace[f"_{count}"] = value

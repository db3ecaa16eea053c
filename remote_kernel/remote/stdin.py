"""``input()`` and ``getpass.getpass()`` inside a remote cell: a question to the notebook side.

While cells run, ``builtins.input`` and ``getpass.getpass`` are versions that, in a thread
running a cell, ask that cell's sink (``sink.input(prompt, password)``: one callback request
with no time limit, which the notebook side answers with its kernel's own input request, so
the front end shows its prompt box) and return the answer; in every other thread they are
what they were. A sink that has no ``input`` (a script's own sink) leaves them reading this
process's stdin, as everywhere outside cells (``conn.execute("input()")`` included).

The notebook side's refusals come back as this side's own exceptions, without the notebook's
frames, as ``input()`` raises them in a local kernel: ``StdinNotImplementedError`` when the
front end allows no input (IPython's class where IPython is installed here, else a
``NotImplementedError`` of that name), ``EOFError`` at end of input and ``KeyboardInterrupt``
for the Stop button pressed at the prompt.
"""

from __future__ import annotations

import builtins
import getpass
from collections.abc import Callable
from typing import Any

from remote_kernel.errors import RemoteError


class StdinNotImplementedError(NotImplementedError):
    """IPython's ``StdinNotImplementedError`` where IPython is not installed."""


def install(current_cell: Callable[[], Any], undo: Callable[[Callable[[], None]], Any]) -> None:
    """Put the cell versions in place; ``undo`` receives how to take each away again.
    ``current_cell()`` is the cell the calling thread runs, or None."""
    original_input = builtins.input
    original_getpass = getpass.getpass

    def cell_input(prompt: Any = "") -> str:
        cell = current_cell()
        if cell is None or not _answers(cell):
            return original_input(prompt)
        return ask(cell, str(prompt), password=False)

    def cell_getpass(prompt: str = "Password: ", stream: Any = None, **kwargs: Any) -> str:
        cell = current_cell()
        if cell is None or not _answers(cell):
            return original_getpass(prompt, stream, **kwargs)
        return ask(cell, str(prompt), password=True)

    builtins.input = cell_input
    getpass.getpass = cell_getpass
    undo(lambda: _put_back(builtins, "input", cell_input, original_input))
    undo(lambda: _put_back(getpass, "getpass", cell_getpass, original_getpass))


def _put_back(owner: Any, name: str, ours: Any, original: Any) -> None:
    """Undo one patch, unless someone replaced it in the meantime (theirs stays)."""
    if getattr(owner, name, None) is ours:
        setattr(owner, name, original)


def _answers(cell: Any) -> bool:
    """Whether the cell's sink answers input(): asked once per cell (one round trip)."""
    if cell.answers_input is None:
        try:
            cell.answers_input = getattr(cell.sink, "input", None) is not None
        except Exception:  # a sink that refuses the name: it has none to offer
            cell.answers_input = False
    return bool(cell.answers_input)


def ask(cell: Any, prompt: str, password: bool) -> str:
    """The notebook side's answer to ``prompt`` (see the module docstring for its errors)."""
    cell.flush()  # what the cell printed before the prompt shows first, as in ipykernel
    sink = cell.sink
    conn = getattr(sink, "_rk_conn", None)  # a netref's connection (a slot: no request)
    try:
        if conn is None:  # a sink in this process
            answer = sink.input(prompt, password)
        else:  # no time limit: the user takes the time they need to answer
            answer = conn.call(sink, "input", prompt, password, timeout=None)
    except RemoteError as exc:
        own = _own_error(exc)
        if own is None:
            raise
        raise own from None
    if type(answer) is not str:
        raise TypeError(f"input() answered with {type(answer).__name__}, not str")
    return answer


def _own_error(exc: RemoteError) -> BaseException | None:
    """This side's exception for the notebook side's refusal, or None to keep ``exc``."""
    name = exc.remote_type.rpartition(".")[2]
    message = str(exc)
    if name == "KeyboardInterrupt":
        return KeyboardInterrupt(message or "Interrupted by user")
    if name == "EOFError":
        return EOFError(*((message,) if message else ()))
    if name == "StdinNotImplementedError":
        return stdin_not_implemented()(message)
    return None


def stdin_not_implemented() -> type[NotImplementedError]:
    """IPython's StdinNotImplementedError if IPython is installed here, else ours."""
    try:
        from IPython.core import error
    except ImportError:
        return StdinNotImplementedError
    return error.StdinNotImplementedError

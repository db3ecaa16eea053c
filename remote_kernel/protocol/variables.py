"""The variables a ``%xmode Verbose`` traceback shows for a frame: the names on its line.

IPython's Verbose mode lists, under each frame, the variables of the piece of code that was
running, with their reprs. A remote frame has no local objects to ask, so the side where it
ran sends these pairs with the exception, but only to a peer that asked for them (it renders
in Verbose mode) and that could read them anyway (a classic service: see
``dispatch._notify``). Each repr is bounded (``reprlib``), and a repr that fails says so
instead of failing the exception it describes.
"""

from __future__ import annotations

import inspect
import keyword
import re
import reprlib
import types
from types import FrameType

MAX_VARIABLES = 24  # names shown per frame
MAX_REPR = 240  # characters of one value's repr
MAX_ARGUMENTS = 4 * MAX_REPR  # characters of a call's arguments, "(a=3, b=0)"

_STRINGS = re.compile(r"""(?:[rbfuRBFU]{0,2})("[^"\\]*(?:\\.[^"\\]*)*"|'[^'\\]*(?:\\.[^'\\]*)*')""")
_NAMES = re.compile(r"(?<![\w.])[^\W\d]\w*")

# What IPython leaves out of a Verbose frame too: the functions, classes and modules a line
# names say nothing its source does not.
_NOT_SHOWN = (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
              types.ModuleType, type)



class _LocalRepr(reprlib.Repr):
    """``reprlib``'s bounded repr that asks no peer: a netref (here, or inside a container)
    is named, not asked for its repr, which would be a request sent while this side builds
    a message of its own."""

    def repr1(self, x: object, level: int) -> str:
        if _is_netref(x):
            return "<netref>"
        return super().repr1(x, level)


def _is_netref(value: object) -> bool:
    # By name: this layer does not import core, where netrefs are made.
    return any(klass.__name__ == "BaseNetref" and klass.__module__ == "remote_kernel.core.netref"
               for klass in type(value).__mro__)


_repr = _LocalRepr()
_repr.maxstring = _repr.maxother = MAX_REPR
_repr.maxlevel = 3


def line_names(line: str) -> list[str]:
    """The names a line of source uses, in order, once each: no keywords, no attribute
    names after a dot, nothing inside string literals."""
    names: list[str] = []
    for name in _NAMES.findall(_STRINGS.sub(" ", line)):
        if not keyword.iskeyword(name) and name not in names:
            names.append(name)
    return names


def line_variables(frame: FrameType, line: str) -> tuple[tuple[str, str], ...]:
    """``(name, repr)`` of each name on ``line`` that the frame's locals or globals hold."""
    found: list[tuple[str, str]] = []
    scopes = (frame.f_locals, frame.f_globals)
    for name in line_names(line):
        for scope in scopes:
            if name in scope:
                if _is_netref(scope[name]) or not isinstance(scope[name], _NOT_SHOWN):
                    found.append((name, _bounded_repr(scope[name])))
                break
        if len(found) == MAX_VARIABLES:
            break
    return tuple(found)


def _bounded_repr(value: object) -> str:
    try:
        return _repr.repr(value)[:MAX_REPR]
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not cost the traceback
        return f"<repr failed: {type(exc).__name__}>"


def call_arguments(frame: FrameType) -> str:
    """The arguments the frame's function was called with, as IPython's Verbose header
    writes them: ``(a=3, b=0)``; "" for a module's frame."""
    if frame.f_code.co_name == "<module>":
        return ""
    try:
        arguments = inspect.getargvalues(frame)
        text = inspect.formatargvalues(*arguments,
                                       formatvalue=lambda value: "=" + _bounded_repr(value))
    except Exception:  # noqa: BLE001 - an odd frame: no arguments rather than no traceback
        return ""
    return text[:MAX_ARGUMENTS]

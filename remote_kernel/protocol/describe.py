"""How this side describes its objects: type descriptors for netref classes, display
bundles, ``dir``, inspection and the object browser's children.

These run on the side that owns the object, with that side's IPython formatters when IPython
is importable there, so a DataFrame is rendered as HTML by the machine that holds it.
"""

from __future__ import annotations

import ast
import base64
import inspect
import io
import linecache
import os
import re
import sys
import types
from typing import Any

from remote_kernel.protocol.policy import FORWARDED_DUNDERS, AttributePolicy

Descriptor = tuple  # (module, qualname, methods, dunders, flags, builtin_name)

MAX_REPR = 10_000
_formatter: Any = None


def _display_formatter() -> Any:
    global _formatter
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is not None:
        return shell.display_formatter
    if _formatter is None:
        from IPython.core.formatters import DisplayFormatter

        _formatter = DisplayFormatter()
    return _formatter


def safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<{type(obj).__name__} object; repr failed: {type(exc).__name__}: {exc}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


def mimebundle(obj: Any, include: Any = None, exclude: Any = None,
               formatter: Any = None) -> tuple[dict, dict]:
    """(data, metadata) as IPython would display ``obj`` here (with ``formatter``, an IPython
    DisplayFormatter, or this process's); repr when IPython is absent. A matplotlib figure
    is rendered as PNG, as IPython's inline backend does."""
    data: dict = {}
    metadata: dict = {}
    if formatter is None:
        formatter = _display_formatter()
    if formatter is not None:
        try:
            data, metadata = formatter.format(obj, include=include, exclude=exclude)
            data, metadata = json_safe(data), json_safe(metadata)
        except Exception:
            data, metadata = {}, {}
    if not data:
        data, metadata = {"text/plain": safe_repr(obj)}, {}
    if "image/png" not in data and (not include or "image/png" in include) \
            and not (exclude and "image/png" in exclude):
        png = figure_png(obj)
        if png is not None:
            data["image/png"] = png
    return data, metadata


def is_figure(obj: Any) -> bool:
    """True for a matplotlib Figure (without importing matplotlib when it is not loaded)."""
    if "matplotlib.figure" not in sys.modules or \
            not type(obj).__module__.startswith("matplotlib"):
        return False
    from matplotlib.figure import Figure

    return isinstance(obj, Figure)


def figure_png(obj: Any) -> str | None:
    """A matplotlib figure as base64 PNG, rendered as IPython's inline backend renders it
    (tight bounding box, the figure's own colors and dpi); None for anything else and for
    a figure with nothing drawn in it."""
    if not is_figure(obj) or not (obj.axes or obj.lines or obj.images or obj.texts):
        return None
    buffer = io.BytesIO()
    obj.canvas.print_figure(buffer, format="png", bbox_inches="tight", dpi=obj.dpi,
                            facecolor=obj.get_facecolor(), edgecolor=obj.get_edgecolor())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def json_safe(value: Any) -> Any:
    """JSON-like data only (display bundles, comm and panel messages): dicts with string
    keys, lists, str, bytes, bool, int and finite floats (NaN and infinities become None);
    anything else becomes its ``str``."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def is_simple_callable(obj: Any) -> bool:
    """IPython's test (oinspect.is_simple_callable): functions, methods and builtins show
    signature, docstring and file, and no "String form"."""
    return inspect.isfunction(obj) or inspect.ismethod(obj) or \
        isinstance(obj, (types.BuiltinFunctionType, types.MethodDescriptorType))


def object_info(obj: Any, detail: int = 0) -> dict[str, Any]:
    """Type, name, doc, signature, file and (detail >= 1) source of ``obj``."""
    cls = type(obj)
    simple = is_simple_callable(obj)
    isclass = isinstance(obj, type)
    info: dict[str, Any] = {
        "type_name": cls.__name__,
        "type_qualname": f"{cls.__module__}.{cls.__qualname__}",
        "name": str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "") or ""),
        # As IPython: no string form for classes and plain callables (a bound method's
        # repr would show its whole object, a DataFrame for df.describe).
        "string_form": "" if simple or isclass else safe_repr(obj),
        "docstring": inspect.getdoc(obj) or "",
        "signature": _signature(obj) if callable(obj) else "",
        "file": "",
        "source": "",
        "length": None,
        "init_docstring": "",
        "class_docstring": "" if isclass or inspect.isroutine(obj)
        else inspect.getdoc(cls) or "",
        "callable": callable(obj),
        "isclass": isclass,
        "simple_callable": simple,
    }
    try:
        info["length"] = len(obj) if hasattr(cls, "__len__") else None
    except Exception:
        info["length"] = None
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj) else cls
    info["file"] = defining_file(target)
    if detail >= 1:
        info["source"] = _source(target, info["file"])
    if isinstance(obj, type):
        init = getattr(obj, "__init__", None)
        if init is not None and init is not object.__init__:
            info["init_docstring"] = inspect.getdoc(init) or ""
            info["signature"] = _signature(obj)
    return info


def _known_file(filename: str) -> bool:
    return bool(filename) and (filename in linecache.cache or os.path.exists(filename))


def _defines_class(filename: str, cls: type) -> bool:
    pattern = re.compile(rf"^\s*class\s+{re.escape(cls.__name__)}\b")
    return any(pattern.match(line) for line in linecache.getlines(filename))


def defining_file(target: Any) -> str:
    """Where ``target`` (a class, routine or module) was defined. For a class that is its
    module's file only if that file defines it: a class made in a remote cell (module
    ``__main__``, the server's script) is found through its methods' code, in
    ``<remote-cell-N>``; "" when nothing tells."""
    try:
        found = inspect.getsourcefile(target) or inspect.getfile(target) or ""
    except (TypeError, OSError):
        found = ""
    if not inspect.isclass(target) or (found and _defines_class(found, target)):
        return found
    for attr in list(vars(target).values()):
        if isinstance(attr, (classmethod, staticmethod)):
            attr = attr.__func__
        elif isinstance(attr, property):
            attr = attr.fget
        code = getattr(attr, "__code__", None)
        if code is not None and _known_file(code.co_filename) \
                and _defines_class(code.co_filename, target):
            return code.co_filename
    if target.__module__ == "__main__":  # no method to tell: the latest cell defining it
        cells = [name for name in list(linecache.cache) if name.startswith("<remote-")
                 and _defines_class(name, target)]
        if cells:
            return max(cells, key=lambda name: (len(name), name))
    return ""


def _source(target: Any, filename: str) -> str:
    # A class is looked up in the file that defines it (defining_file): Python 3.13's
    # inspect.getsource trusts __firstlineno__ in the module's file, which for a class made
    # in a remote cell is the server's script.
    if inspect.isclass(target) and filename:
        found = _class_source(target, filename)
        if found:
            return found
    try:
        return inspect.getsource(target)
    except (TypeError, OSError):
        return ""


def _class_source(cls: type, filename: str) -> str:
    """The source of ``cls`` in ``filename`` (a cell in linecache), found by its name."""
    lines = linecache.getlines(filename)
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return ""
    path = [part for part in cls.__qualname__.split(".") if part != "<locals>"]
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == path[-1]:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return "".join(lines[first - 1:node.end_lineno])
    return ""


_LEAF_TYPES = (str, bytes, int, float, complex, bool, type(None))


def _short_repr(obj: Any, width: int = 80) -> str:
    text = safe_repr(obj).replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def _expandable(obj: Any) -> bool:
    if isinstance(obj, _LEAF_TYPES):
        return False
    if isinstance(obj, (dict, list, tuple, set, frozenset)):
        return len(obj) > 0
    return True


def _entry(name: str, kind: str, key: Any, value: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "key": key, "type": type(value).__name__,
            "repr": _short_repr(value), "expandable": _expandable(value)}


def children(obj: Any, resolve: Any, limit: int) -> list[dict[str, Any]]:
    """The browsable children of ``obj``: items of mappings and sequences, else the
    attributes the policy allows: ``resolve(name)`` is the name to read for ``name``, or
    None (private names are left out; an attribute shows once, under its first name)."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        # dict's own items(), not an override of a subclass: reading items is __iter__ and
        # __getitem__, the safe dunders, and never a method the policy was not asked about.
        for key, value in list(dict.items(obj))[:limit]:
            if isinstance(key, str) and key.startswith("__"):
                continue
            if isinstance(key, (str, int, float, bool)):
                found.append(_entry(repr(key) if not isinstance(key, str) else key, "item",
                                    key, value))
        return found
    if isinstance(obj, (list, tuple)):
        return [_entry(f"[{i}]", "item", i, value) for i, value in enumerate(obj[:limit])]
    seen: set[str] = set()
    for name in sorted(dir(obj)):
        if name.startswith("_"):
            continue
        resolved = resolve(name)
        if resolved is None or resolved in seen:
            continue
        seen.add(resolved)
        try:
            value = getattr(obj, resolved)
        except Exception:
            continue
        found.append(_entry(name, "attr", name, value))
        if len(found) >= limit:
            break
    return found


# Remote objects of these exact types answer isinstance() with the local builtin.
FAKE_CLASSES = {"list": list, "dict": dict, "set": set, "bytearray": bytearray}
# Iterators of builtin containers are read in batches (BUFFITER); others item by item.
BUFFERED_ITERATORS = frozenset(
    type(iter(value)).__name__
    for value in ([], (), {}, set(), "", b"", range(1), {}.items(), {}.values(), bytearray())
)

_METHOD_TYPES = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType,
    types.WrapperDescriptorType, types.ClassMethodDescriptorType, classmethod, staticmethod,
)

FLAG_TYPE = 1  # the object is a class
FLAG_UNHASHABLE = 2
FLAG_BUFFERED_ITER = 4


def describe_type(cls: type, policy: AttributePolicy) -> Descriptor:
    """What the peer needs to build a proxy class for instances of ``cls``."""
    methods: set[str] = set()
    dunders: set[str] = set()
    prefix = policy.prefix
    for klass in cls.__mro__:
        if klass is object:
            continue
        for name, attr in list(vars(klass).items()):
            if name.startswith("__") and name.endswith("__"):
                if name in FORWARDED_DUNDERS and attr is not None:
                    if policy.resolve_on_type(cls, name) is not None:
                        dunders.add(name)
                continue
            if not isinstance(attr, _METHOD_TYPES) and not getattr(attr, "_rk_exposed", False):
                continue
            if policy.resolve_on_type(cls, name) is None:
                continue
            methods.add(name)
            if prefix and name.startswith(prefix) and len(name) > len(prefix):
                methods.add(name[len(prefix):])
    flags = 0
    if issubclass(cls, type):
        flags |= FLAG_TYPE
    if getattr(cls, "__hash__", None) is None:
        flags |= FLAG_UNHASHABLE
    if cls.__module__ == "builtins" and cls.__name__ in BUFFERED_ITERATORS:
        flags |= FLAG_BUFFERED_ITER
    builtin_name = cls.__name__ if FAKE_CLASSES.get(cls.__name__) is cls else ""
    module = getattr(cls, "__module__", None) or "builtins"
    qualname = getattr(cls, "__qualname__", None) or cls.__name__
    return (str(module), str(qualname), tuple(sorted(methods)), tuple(sorted(dunders)), flags,
            builtin_name)


def public_dir(obj: Any, prefix: str) -> list[str]:
    """``dir(obj)`` plus the exposed names without their prefix."""
    try:
        names = set(dir(obj))
    except Exception:
        names = set()
    if prefix:
        names.update(n[len(prefix):] for n in list(names) if n.startswith(prefix) and n != prefix)
    return sorted(names)

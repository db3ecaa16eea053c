"""How the peer describes one of its objects to a notebook: display, inspection.

These run on the side that owns the object, with that side's IPython formatters when IPython
is importable there, so a DataFrame is rendered as HTML by the machine that holds it.
"""

from __future__ import annotations

import inspect
from typing import Any

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


def _safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<{type(obj).__name__} object; repr failed: {type(exc).__name__}: {exc}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


def mimebundle(obj: Any, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
    """(data, metadata) as IPython would display ``obj`` here; repr when IPython is absent."""
    formatter = _display_formatter()
    if formatter is not None:
        try:
            data, metadata = formatter.format(obj, include=include, exclude=exclude)
            if data:
                return json_safe(data), json_safe(metadata)
        except Exception:
            pass
    return {"text/plain": _safe_repr(obj)}, {}


def json_safe(value: Any) -> Any:
    """JSON-like data only (what a display bundle may hold), so it travels by value."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    return str(value)


def _signature(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def object_info(obj: Any, detail: int = 0) -> dict[str, Any]:
    """Type, name, doc, signature, file and (detail >= 1) source of ``obj``."""
    cls = type(obj)
    info: dict[str, Any] = {
        "type_name": cls.__name__,
        "type_qualname": f"{cls.__module__}.{cls.__qualname__}",
        "name": str(getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "") or ""),
        "string_form": _safe_repr(obj),
        "docstring": inspect.getdoc(obj) or "",
        "signature": _signature(obj) if callable(obj) else "",
        "file": "",
        "source": "",
        "length": None,
        "init_docstring": "",
        "class_docstring": "" if isinstance(obj, type) or inspect.isroutine(obj)
        else inspect.getdoc(cls) or "",
        "callable": callable(obj),
        "isclass": isinstance(obj, type),
    }
    try:
        info["length"] = len(obj) if hasattr(cls, "__len__") else None
    except Exception:
        info["length"] = None
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj) else cls
    try:
        info["file"] = inspect.getsourcefile(target) or inspect.getfile(target) or ""
    except (TypeError, OSError):
        info["file"] = ""
    if detail >= 1:
        try:
            info["source"] = inspect.getsource(target)
        except (TypeError, OSError):
            info["source"] = ""
    if isinstance(obj, type):
        init = getattr(obj, "__init__", None)
        if init is not None and init is not object.__init__:
            info["init_docstring"] = inspect.getdoc(init) or ""
            info["signature"] = _signature(obj)
    return info


_LEAF_TYPES = (str, bytes, int, float, complex, bool, type(None))


def _short_repr(obj: Any, width: int = 80) -> str:
    text = _safe_repr(obj).replace("\n", " ")
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


def children(obj: Any, allowed: Any, limit: int) -> list[dict[str, Any]]:
    """The browsable children of ``obj``: items of mappings and sequences, else the
    attributes ``allowed(name)`` accepts (private names left out)."""
    found: list[dict[str, Any]] = []
    if isinstance(obj, dict):
        for key, value in list(obj.items())[:limit]:
            if isinstance(key, str) and key.startswith("__"):
                continue
            if isinstance(key, (str, int, float, bool)):
                found.append(_entry(repr(key) if not isinstance(key, str) else key, "item",
                                    key, value))
        return found
    if isinstance(obj, (list, tuple)):
        return [_entry(f"[{i}]", "item", i, value) for i, value in enumerate(obj[:limit])]
    for name in sorted(dir(obj)):
        if name.startswith("_") or not allowed(name):
            continue
        try:
            value = getattr(obj, name)
        except Exception:
            continue
        found.append(_entry(name, "attr", name, value))
        if len(found) >= limit:
            break
    return found

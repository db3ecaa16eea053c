"""``obj?``, ``obj??`` and Shift-Tab on netrefs: ONE request for type, name, docstring,
signature, file and source, handed to IPython in the fields it builds for local objects."""

from __future__ import annotations

from typing import Any

from IPython.core.oinspect import Inspector

from remote_kernel.core.netref import BaseNetref, RemoteMethod
from remote_kernel.errors import RemoteKernelError

_FIELDS = ("type_name", "base_class", "string_form", "namespace", "length", "file",
           "definition", "docstring", "source", "init_definition", "class_docstring",
           "init_docstring", "call_def", "call_docstring", "subclasses")


TIMEOUT = 5.0  # seconds an inspection may take on the peer


def remote_info(obj: Any, detail_level: int) -> dict[str, Any]:
    if isinstance(obj, RemoteMethod):
        owner = obj._rk_owner
        return owner._rk_conn.object_info(owner, obj._rk_name, detail_level, timeout=TIMEOUT)
    return obj._rk_conn.object_info(obj, None, detail_level, timeout=TIMEOUT)


class RemoteInspector(Inspector):
    """IPython's inspector, answering for netrefs from one OINFO request.

    When the connection is dead (or the peer does not answer within ``TIMEOUT``), a
    frontend's inspect request (Shift-Tab) gets "not found" at once: ipykernel answers
    found=false for a ``KeyError``. ``obj?`` shows the one-line reason instead.
    """

    def _get_info(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._get_info(obj, *args, **kwargs)
        except RemoteKernelError as exc:
            if not isinstance(obj, (BaseNetref, RemoteMethod)):
                raise
            raise KeyError(str(exc)) from exc

    def pinfo(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().pinfo(obj, *args, **kwargs)
        except KeyError as exc:
            if isinstance(exc.__cause__, RemoteKernelError):
                raise exc.__cause__ from None
            raise

    def info(self, obj: Any, oname: str = "", info: Any = None, detail_level: int = 0) -> Any:
        if not isinstance(obj, (BaseNetref, RemoteMethod)):
            return super().info(obj, oname=oname, info=info, detail_level=detail_level)
        remote = remote_info(obj, detail_level)
        out: dict[str, Any] = dict.fromkeys(_FIELDS)
        name = oname or remote.get("name") or ""
        signature = remote.get("signature") or ""
        out.update({
            "name": name,
            "found": True,
            "isalias": False,
            "ismagic": False,
            "isclass": bool(remote.get("isclass")),
            # As local IPython: the type's __name__ ("function", "ndarray").
            "type_name": str(remote.get("type_name") or remote.get("type_qualname") or ""),
            "string_form": remote.get("string_form") or None,
            "file": remote.get("file") or None,
            "docstring": remote.get("docstring") or "<no docstring>",
            "class_docstring": remote.get("class_docstring") or None,
            "init_docstring": remote.get("init_docstring") or None,
            "length": str(remote["length"]) if remote.get("length") is not None else None,
            "source": (remote.get("source") or None) if detail_level else None,
            "namespace": (info.namespace if info is not None else None) or "Interactive",
        })
        if signature:
            key = "init_definition" if remote.get("isclass") else "definition"
            out[key] = f"{name or 'obj'}{signature}"  # as IPython: the name as typed
        if out["source"] and out["docstring"] and out["docstring"] in out["source"]:
            out["docstring"] = None
        out["_rk_simple_callable"] = bool(remote.get("simple_callable"))
        return out

    def _make_info_unformatted(self, obj: Any, info: Any, formatter: Any, detail_level: int,
                               omit_sections: Any) -> Any:
        """IPython lays out functions and methods apart from other objects (signature,
        docstring, file; no string form): a remote function or method is laid out so too."""
        if isinstance(obj, (BaseNetref, RemoteMethod)) and info.get("_rk_simple_callable"):
            obj = _a_function
        return super()._make_info_unformatted(obj, info, formatter, detail_level, omit_sections)


def _a_function() -> None:
    """Stands for a remote function in IPython's layout choice (is_simple_callable)."""



def install(shell: Any) -> Any:
    """Make ``shell.inspector`` a RemoteInspector, also across ``%colors``: IPython 8 builds
    a new inspector from ``shell.inspector_class`` whenever the colors change (IPython 9
    changes the theme of the one it has), so the class is replaced too."""
    previous = shell.inspector
    previous_class = shell.inspector_class
    if not issubclass(previous_class, RemoteInspector):
        shell._rk_inspector_class = previous_class
        shell.inspector_class = RemoteInspector
    if _accepts_theme():
        inspector = RemoteInspector(
            theme_name=getattr(previous, "_theme_name", None) or "nocolor",
            str_detail_level=getattr(previous, "str_detail_level", 0),
            parent=shell,
        )
        shell.inspector = inspector
    else:  # IPython 8: as IPython builds it, with the shell's colors
        shell.init_inspector()
        inspector = shell.inspector
    inspector._rk_previous = previous  # type: ignore[attr-defined]
    return inspector


def _accepts_theme() -> bool:
    import inspect as _inspect

    return "theme_name" in _inspect.signature(Inspector.__init__).parameters


def uninstall(shell: Any) -> None:
    previous_class = shell.__dict__.pop("_rk_inspector_class", None)
    if previous_class is not None:
        shell.inspector_class = previous_class
    if not isinstance(shell.inspector, RemoteInspector):
        return
    if not _accepts_theme():  # IPython 8: one as IPython builds it, with today's colors
        shell.init_inspector()
        return
    previous = getattr(shell.inspector, "_rk_previous", None)
    if previous is not None:
        shell.inspector = previous

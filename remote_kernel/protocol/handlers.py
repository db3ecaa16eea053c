"""What each request does on the receiving side, and the attribute policy.

Handlers receive already unboxed arguments and a :class:`RequestContext`; they return the
result (sent by reference unless wrapped in ``ByValue``) or raise. Every attribute a handler
reads or writes on the peer's behalf goes through :meth:`AttributePolicy.resolve`: no
handler calls ``getattr`` with a name the peer chose without it (CVE-2019-16328 was a
comparison handler that did).
"""

from __future__ import annotations

import inspect
import itertools
import operator
import types
from collections.abc import Callable
from typing import Any

from remote_kernel.config import ProtocolConfig
from remote_kernel.errors import AccessDenied
from remote_kernel.protocol.boxing import ByValue, Descriptor
from remote_kernel.protocol.messages import Op

# RPyC's safe dunders: numbers, containers, iteration, context managers.
SAFE_DUNDERS = frozenset("""
__abs__ __add__ __and__ __bool__ __contains__ __delitem__ __divmod__ __doc__ __eq__
__float__ __floordiv__ __ge__ __getitem__ __gt__ __hash__ __iadd__ __iand__ __ifloordiv__
__ilshift__ __imod__ __imul__ __index__ __int__ __invert__ __ior__ __ipow__ __irshift__
__isub__ __iter__ __itruediv__ __ixor__ __le__ __len__ __lshift__ __lt__ __mod__ __mul__
__ne__ __neg__ __next__ __or__ __pos__ __pow__ __radd__ __rand__ __rdivmod__ __repr__
__rfloordiv__ __rlshift__ __rmod__ __rmul__ __ror__ __rpow__ __rrshift__ __rshift__
__rsub__ __rtruediv__ __rxor__ __setitem__ __str__ __sub__ __truediv__ __xor__
__length_hint__ __enter__ __exit__ __format__ __reversed__ __round__ __trunc__ __floor__
__ceil__ __complex__ __matmul__ __rmatmul__ __imatmul__ __call__ __aenter__ __aexit__
""".split())

# Dunders a netref class may define, forwarding to the peer (if the remote type has them).
FORWARDED_DUNDERS = SAFE_DUNDERS - {"__doc__", "__repr__", "__str__", "__format__", "__hash__",
                                    "__length_hint__", "__aenter__", "__aexit__"}

# Builtin types whose public methods are safe under allow_safe_attrs.
SAFE_BUILTIN_TYPES: tuple[type, ...] = (
    list, dict, set, frozenset, tuple, str, bytes, bytearray, int, float, complex, bool,
    range, type({}.keys()), type({}.values()), type({}.items()), slice,
)
SAFE_BUILTIN_METHODS = frozenset(
    name for cls in SAFE_BUILTIN_TYPES for name in dir(cls) if not name.startswith("_")
)
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

_MISSING = object()
FLAG_TYPE = 1  # the object is a class
FLAG_UNHASHABLE = 2
FLAG_BUFFERED_ITER = 4


def exposed(obj: Any) -> Any:
    """Mark a method (or class) as visible to the peer under its own name."""
    obj._rk_exposed = True
    return obj


class AttributePolicy:
    """Which attributes of a local object the peer may reach."""

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config
        self.prefix = config.exposed_prefix if config.allow_exposed_attrs else ""
        self._by_type: dict[tuple[type, str], str | None] = {}

    def resolve(self, obj: Any, name: str, write: bool = False, delete: bool = False) -> str:
        """The attribute name to use for the peer's ``name``, or raise ``AccessDenied``."""
        config = self.config
        if not isinstance(name, str):
            raise AccessDenied("attribute names must be strings")
        if write and not config.allow_setattr:
            raise AccessDenied(f"setting attribute {name!r} is denied (allow_setattr is off)")
        if delete and not config.allow_delattr:
            raise AccessDenied(f"deleting attribute {name!r} is denied (allow_delattr is off)")
        cls = type(obj)
        # A proxy we forward for a third party stands for its builtin type (list, dict...).
        cls = getattr(cls, "_rk_builtin", None) or cls
        instance_dict = getattr(obj, "__dict__", None)
        if type(instance_dict) is dict and self.prefix and \
                not isinstance(obj, type) and self.prefix + name in instance_dict:
            found: str | None = self.prefix + name  # exposed on the instance itself
        elif isinstance(obj, type) or type(instance_dict) is not dict:
            found = self._resolve(cls, name, obj)  # classes, modules, odd objects: look now
        else:
            key = (cls, name)
            try:
                found = self._by_type[key]
            except KeyError:  # what the class decides is the same for all its instances
                found = self._by_type[key] = self._resolve(cls, name, None)
            except TypeError:  # an unhashable class
                found = self._resolve(cls, name, obj)
        if found is None:
            raise AccessDenied(
                f"access to {name!r} of a {type(obj).__name__} object is denied by the "
                "attribute policy"
            )
        return found

    def resolve_on_type(self, cls: type, name: str) -> str | None:
        return self._resolve(cls, name, None)

    def _resolve(self, cls: type, name: str, obj: Any) -> str | None:
        config = self.config
        prefix = self.prefix
        if prefix:
            if name.startswith(prefix):
                return name
            # A static lookup: probing must not run the object's __getattr__.
            target = obj if obj is not None else cls
            if inspect.getattr_static(target, prefix + name, _MISSING) is not _MISSING:
                return prefix + name
            if getattr(getattr(cls, name, None), "_rk_exposed", False):
                return name
        if config.allow_all_attrs:
            return name
        if config.allow_safe_attrs:
            if name in SAFE_DUNDERS:
                return name
            if name in SAFE_BUILTIN_METHODS and issubclass(cls, SAFE_BUILTIN_TYPES):
                return name
        if config.allow_public_attrs and not name.startswith("_"):
            return name
        return None


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


class RequestContext:
    """What handlers may touch: the root service object, the policy, and the connection's
    own helpers for describing objects (display, completion, inspection)."""

    def __init__(self, root: Any, policy: AttributePolicy) -> None:
        self.root = root
        self.policy = policy


def _getattr(ctx: RequestContext, obj: Any, name: str) -> Any:
    return getattr(obj, ctx.policy.resolve(obj, name))


def _setattr(ctx: RequestContext, obj: Any, name: str, value: Any) -> None:
    setattr(obj, ctx.policy.resolve(obj, name, write=True), value)


def _delattr(ctx: RequestContext, obj: Any, name: str) -> None:
    delattr(obj, ctx.policy.resolve(obj, name, delete=True))


def _call(ctx: RequestContext, obj: Any, args: tuple, kwargs: dict | None) -> Any:
    if not callable(obj):
        raise TypeError(f"{type(obj).__name__!r} object is not callable")
    return obj(*args, **(kwargs or {}))


def _callattr(ctx: RequestContext, obj: Any, name: str, args: tuple, kwargs: dict | None) -> Any:
    return getattr(obj, ctx.policy.resolve(obj, name))(*args, **(kwargs or {}))


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt,
    "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
}


def _cmp(ctx: RequestContext, obj: Any, other: Any, op: str) -> Any:
    compare = _COMPARISONS.get(op)
    if compare is None:
        raise AccessDenied(f"{op!r} is not a comparison")
    ctx.policy.resolve(obj, op)
    return compare(obj, other)


def _dir(ctx: RequestContext, obj: Any) -> ByValue:
    return ByValue(tuple(public_dir(obj, ctx.policy.prefix)))


def public_dir(obj: Any, prefix: str) -> list[str]:
    """``dir(obj)`` plus the exposed names without their prefix."""
    try:
        names = set(dir(obj))
    except Exception:
        names = set()
    if prefix:
        names.update(n[len(prefix):] for n in list(names) if n.startswith(prefix) and n != prefix)
    return sorted(names)


def _buffiter(ctx: RequestContext, iterator: Any, count: int) -> tuple:
    return tuple(itertools.islice(iterator, max(1, min(int(count), 65536))))


def _ctxexit(ctx: RequestContext, obj: Any, exc_type: str | None, message: str | None) -> Any:
    exit_method = getattr(obj, ctx.policy.resolve(obj, "__exit__"))
    if exc_type is None:
        return exit_method(None, None, None)
    from remote_kernel.protocol.boxing import remote_exception_class

    cls = remote_exception_class("builtins", exc_type)
    exc = cls(message or "")
    return exit_method(cls, exc, None)


def _instancecheck(ctx: RequestContext, cls: Any, obj: Any, subclass: bool) -> bool:
    return bool(issubclass(obj, cls) if subclass else isinstance(obj, cls))


def _inspect(ctx: RequestContext, obj: Any) -> ByValue:
    return ByValue(describe_type(type(obj), ctx.policy))


def _keys(ctx: RequestContext, obj: Any) -> ByValue:
    hook = getattr(type(obj), "_ipython_key_completions_", None)
    if hook is not None:
        keys = list(hook(obj))
    elif hasattr(obj, "keys"):
        keys = list(obj.keys())
    else:
        keys = []
    return ByValue(tuple(k for k in keys[:5000] if isinstance(k, (str, bytes, int, float))))


def _oinfo(ctx: RequestContext, obj: Any, attribute: str | None, detail: int) -> ByValue:
    from remote_kernel.describe import object_info

    if attribute is not None:
        obj = getattr(obj, ctx.policy.resolve(obj, attribute))
    return ByValue(object_info(obj, detail))


def _display(ctx: RequestContext, obj: Any, include: Any, exclude: Any) -> ByValue:
    from remote_kernel.describe import mimebundle

    return ByValue(mimebundle(obj, include, exclude))


def _complete(ctx: RequestContext, obj: Any, path: tuple = ()) -> ByValue:
    """Names for ``obj.<TAB>`` (or ``obj.a.b.<TAB>`` with a path): one request."""
    target = _walk(ctx, obj, tuple(("attr", name) for name in path))
    return ByValue(tuple(public_dir(target, ctx.policy.prefix)))


def _walk(ctx: RequestContext, obj: Any, path: tuple) -> Any:
    for step in path:
        if type(step) is not tuple or len(step) != 2:
            raise ValueError("a browser path is a sequence of (kind, name) pairs")
        kind, name = step
        if kind == "attr":
            obj = getattr(obj, ctx.policy.resolve(obj, name))
        elif kind == "item":
            obj = obj[name]
        else:
            raise ValueError(f"unknown browser step kind {kind!r}")
    return obj


def _children(ctx: RequestContext, obj: Any, path: tuple, limit: int) -> ByValue:
    """One level of the object browser, in one request: [{name, kind, type, repr,
    expandable}] for the object at ``path`` below ``obj``; only what the policy allows."""
    from remote_kernel.describe import children

    target = _walk(ctx, obj, path)
    allowed = lambda name: ctx.policy.resolve_on_type(type(target), name) is not None  # noqa: E731
    return ByValue(children(target, allowed, max(1, min(int(limit), 1000))))


LARGE_MARKER = "__rk_large_buffer__"


def _buffer_view(obj: Any) -> tuple[memoryview, tuple]:
    """A flat byte view of a numpy array or bytes-like object, with what rebuilds it."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        view = memoryview(obj).cast("B")
        return view, ("bytes" if isinstance(obj, bytes) else type(obj).__name__, "", ())
    if type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray":
        import numpy

        if obj.dtype.hasobject or obj.dtype.fields is not None:
            raise TypeError(f"cannot copy a numpy array of dtype {obj.dtype} by value")
        flat = numpy.ascontiguousarray(obj).reshape(-1)
        return memoryview(flat).cast("B"), ("ndarray", obj.dtype.str, tuple(obj.shape))
    raise TypeError("not a buffer")


def _obtain(ctx: RequestContext, obj: Any, inline_limit: int | None = None) -> ByValue:
    """A copy by value; a buffer over ``inline_limit`` bytes is announced instead, for the
    client to READ in chunks (with progress and a chance to stop)."""
    if inline_limit is not None:
        try:
            view, (kind, dtype, shape) = _buffer_view(obj)
        except TypeError:
            view = None
        if view is not None and view.nbytes > inline_limit:
            return ByValue((LARGE_MARKER, kind, dtype, shape, view.nbytes))
    return ByValue(obj)


def _read(ctx: RequestContext, obj: Any, offset: int, length: int) -> bytes:
    view, _ = _buffer_view(obj)
    return view[int(offset):int(offset) + int(length)].tobytes()


HANDLERS: dict[int, Callable[..., Any]] = {
    Op.PING: lambda ctx, payload=None: payload,
    Op.GETROOT: lambda ctx: ctx.root,
    Op.GETATTR: _getattr,
    Op.SETATTR: _setattr,
    Op.DELATTR: _delattr,
    Op.CALL: _call,
    Op.CALLATTR: _callattr,
    Op.REPR: lambda ctx, obj: repr(obj),
    Op.STR: lambda ctx, obj: str(obj),
    Op.CMP: _cmp,
    Op.HASH: lambda ctx, obj: hash(obj),
    Op.DIR: _dir,
    Op.INSPECT: _inspect,
    Op.BUFFITER: _buffiter,
    Op.CTXEXIT: _ctxexit,
    Op.INSTANCECHECK: _instancecheck,
    Op.OBTAIN: _obtain,
    Op.READ: _read,
    Op.DELIVER: lambda ctx, value: value,
    Op.DISPLAY: _display,
    Op.COMPLETE: _complete,
    Op.OINFO: _oinfo,
    Op.KEYS: _keys,
    Op.CHILDREN: _children,
}

__all__ = ["HANDLERS", "AttributePolicy", "RequestContext", "describe_type", "exposed"]

"""The attribute policy: which attributes of a local object the peer may reach.

Every handler that reads, writes or calls an attribute on the peer's behalf asks
:meth:`AttributePolicy.resolve` (or :meth:`~AttributePolicy.allowed`, or reads through
:meth:`~AttributePolicy.getattr`); none calls ``getattr`` with a name the peer chose without
it (CVE-2019-16328 was a comparison handler that did), and an attribute is read under the
name the policy resolved, never the one asked for (``config`` may resolve to
``exposed_config``; the private ``config`` stays private). Names follow RPyC's config
switches. The public methods of builtin containers and strings are allowed on instances of
exactly those types, not on subclasses (which may add or override anything).
"""

from __future__ import annotations

import inspect
from typing import Any

from remote_kernel.config import ProtocolConfig
from remote_kernel.errors import AccessDenied

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
_EXACT_BUILTIN_TYPES = frozenset(SAFE_BUILTIN_TYPES)
_MISSING = object()
MAX_CACHED = 4096  # (type, name) decisions kept per connection; the names are the peer's
MAX_CACHED_NAME = 128  # longer names are decided each time, never kept


def exposed(obj: Any) -> Any:
    """Mark a method (or class) as visible to the peer under its own name."""
    obj._rk_exposed = True
    return obj


def _policy_class(cls: type) -> type:
    """A proxy we forward for a third party stands for its builtin type (list, dict...)."""
    return getattr(cls, "_rk_builtin", None) or cls


class AttributePolicy:
    """Which attributes of a local object the peer may reach."""

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config
        self.prefix = config.exposed_prefix if config.allow_exposed_attrs else ""
        self._by_type: dict[tuple[type, str], str | None] = {}

    def resolve(self, obj: Any, name: str, write: bool = False, delete: bool = False) -> str:
        """The attribute name to use for the peer's ``name``, or raise ``AccessDenied``."""
        if write or delete or type(name) is not str:
            self._check_request(name, write, delete)
        instance_dict = getattr(obj, "__dict__", None)
        if type(instance_dict) is not dict or isinstance(obj, type):
            # classes, modules, odd objects: look now
            found = self._resolve(_policy_class(type(obj)), name, obj)
        elif self.prefix and self.prefix + name in instance_dict:
            found = self.prefix + name  # exposed on the instance itself
        else:  # an ordinary instance: what its class allows, cached (every call asks)
            try:
                found = self._by_type[type(obj), name]
            except (KeyError, TypeError):
                found = self._class_decision(obj, name)
        if found is None:
            raise AccessDenied(
                f"access to {name!r} of a {type(obj).__name__} object is denied by the "
                "attribute policy"
            )
        return found

    def _check_request(self, name: Any, write: bool, delete: bool) -> None:
        if not isinstance(name, str):
            raise AccessDenied("attribute names must be strings")
        if write and not self.config.allow_setattr:
            raise AccessDenied(f"setting attribute {name!r} is denied (allow_setattr is off)")
        if delete and not self.config.allow_delattr:
            raise AccessDenied(f"deleting attribute {name!r} is denied (allow_delattr is off)")

    def _class_decision(self, obj: Any, name: str) -> str | None:
        """What the class of an ordinary instance allows, not cached yet: the same for all
        its instances, so it is cached per (class, name)."""
        cls = type(obj)
        try:
            hash(cls)
        except TypeError:  # an unhashable class (a metaclass without __hash__)
            return self._resolve(_policy_class(cls), name, obj)
        found = self._resolve(_policy_class(cls), name, None)
        if len(name) <= MAX_CACHED_NAME:
            if len(self._by_type) >= MAX_CACHED:
                self._by_type.clear()
            self._by_type[cls, name] = found
        return found

    def allowed(self, obj: Any, name: str) -> str | None:
        """The attribute name to use for the peer's ``name``, or None when denied."""
        try:
            return self.resolve(obj, name)
        except AccessDenied:
            return None

    def getattr(self, obj: Any, name: str) -> Any:
        """``obj.<name>`` read on the peer's behalf, under the resolved name."""
        return getattr(obj, self.resolve(obj, name))

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
            if name in SAFE_BUILTIN_METHODS and cls in _EXACT_BUILTIN_TYPES:
                return name
        if config.allow_public_attrs and not name.startswith("_"):
            return name
        return None


__all__ = ["FORWARDED_DUNDERS", "SAFE_BUILTIN_METHODS", "SAFE_BUILTIN_TYPES", "SAFE_DUNDERS",
           "AttributePolicy", "exposed"]

"""What each request does on the receiving side: the opcode -> handler table.

Handlers receive already unboxed arguments and a :class:`RequestContext`; they return the
result (sent by reference unless wrapped in ``ByValue``) or raise. Every attribute a handler
reads or writes on the peer's behalf goes through the attribute policy (``policy.py``).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

from remote_kernel.errors import AccessDenied, ProtocolError
from remote_kernel.protocol.boxing import BatchOutcomes, ByValue, remote_exception_class
from remote_kernel.protocol.describe import (
    children,
    describe_type,
    mimebundle,
    object_info,
    public_dir,
)
from remote_kernel.protocol.messages import Op
from remote_kernel.protocol.policy import AttributePolicy
from remote_kernel.protocol.unboxing import REFUSED, Refusal
from remote_kernel.protocol.values import LARGE_MARKER, Snapshot, check_available, large_plan

MAX_SNAPSHOTS = 4  # large transfers in progress per connection
SNAPSHOT_BUDGET = 1 << 30  # bytes all of them may hold together (the newest is always kept)


class RequestContext:
    """What handlers may touch: the root service object, the policy, and the connection's
    own state for requests that span several messages (the snapshots of chunked obtains).
    ``display(obj, include, exclude)`` answers display requests: the layer above gives one
    that runs an object's own ``_ipython_display_`` (remote/selfdisplay.py); the default
    answers with the object's mimebundle."""

    def __init__(self, root: Any, policy: AttributePolicy,
                 display: Callable[[Any, Any, Any], Any] | None = None) -> None:
        self.root = root
        self.policy = policy
        self.display = display or _mimebundle
        # id(obj) -> (obj, contiguous snapshot): one copy per chunked transfer.
        self.snapshots: dict[int, tuple[Any, memoryview]] = {}

    def snapshot(self, obj: Any, view: memoryview) -> None:
        snapshots = self.snapshots
        snapshots.pop(id(obj), None)
        while snapshots and (len(snapshots) >= MAX_SNAPSHOTS or view.nbytes + sum(
                held.nbytes for _, held in snapshots.values()) > SNAPSHOT_BUDGET):
            del snapshots[next(iter(snapshots))]  # the oldest transfer gives way
        snapshots[id(obj)] = (obj, view)

    def close(self) -> None:
        self.snapshots.clear()


def _getattr(ctx: RequestContext, obj: Any, name: str) -> Any:
    return ctx.policy.getattr(obj, name)


def _setattr(ctx: RequestContext, obj: Any, name: str, value: Any) -> None:
    setattr(obj, ctx.policy.resolve(obj, name, write=True), value)


def _delattr(ctx: RequestContext, obj: Any, name: str) -> None:
    delattr(obj, ctx.policy.resolve(obj, name, delete=True))


def _call(ctx: RequestContext, obj: Any, args: tuple, kwargs: dict | None) -> Any:
    if not callable(obj):
        raise TypeError(f"{type(obj).__name__!r} object is not callable")
    return obj(*args, **(kwargs or {}))


def _callattr(ctx: RequestContext, obj: Any, name: str, args: tuple, kwargs: dict | None) -> Any:
    return ctx.policy.getattr(obj, name)(*args, **(kwargs or {}))


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


def _buffiter(ctx: RequestContext, iterator: Any, count: int) -> tuple:
    return tuple(itertools.islice(iterator, max(1, min(int(count), 65536))))


def _ctxexit(ctx: RequestContext, obj: Any, exc_type: str | None, message: str | None) -> Any:
    exit_method = ctx.policy.getattr(obj, "__exit__")
    if exc_type is None:
        return exit_method(None, None, None)
    cls = remote_exception_class("builtins", exc_type)
    exc = cls(message or "")
    return exit_method(cls, exc, None)


def _instancecheck(ctx: RequestContext, cls: Any, obj: Any, subclass: bool) -> bool:
    return bool(issubclass(obj, cls) if subclass else isinstance(obj, cls))


def _inspect(ctx: RequestContext, obj: Any) -> ByValue:
    return ByValue(describe_type(type(obj), ctx.policy))


def _keys(ctx: RequestContext, obj: Any) -> ByValue:
    """Keys for ``obj[<TAB>``: IPython's hook or ``keys()``, if the policy allows either;
    nothing otherwise."""
    keys: list = []
    for wanted in ("_ipython_key_completions_", "keys"):
        name = ctx.policy.allowed(obj, wanted)
        method = getattr(obj, name, None) if name is not None else None
        if callable(method):
            keys = list(method())
            break
    return ByValue(tuple(k for k in keys[:5000] if isinstance(k, (str, bytes, int, float))))


def _oinfo(ctx: RequestContext, obj: Any, attribute: str | None, detail: int) -> ByValue:
    if attribute is not None:
        obj = ctx.policy.getattr(obj, attribute)
    return ByValue(object_info(obj, detail))


def _mimebundle(obj: Any, include: Any, exclude: Any) -> ByValue:
    return ByValue(mimebundle(obj, include, exclude))


def _display(ctx: RequestContext, obj: Any, include: Any, exclude: Any) -> Any:
    return ctx.display(obj, include, exclude)


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
            obj = ctx.policy.getattr(obj, name)
        elif kind == "item":
            obj = obj[name]
        else:
            raise ValueError(f"unknown browser step kind {kind!r}")
    return obj


def _children(ctx: RequestContext, obj: Any, path: tuple, limit: int) -> ByValue:
    """One level of the object browser, in one request: [{name, kind, type, repr,
    expandable}] for the object at ``path`` below ``obj``; only what the policy allows."""
    target = _walk(ctx, obj, path)
    return ByValue(children(target, lambda name: ctx.policy.allowed(target, name),
                            max(1, min(int(limit), 1000))))


def _obtain(ctx: RequestContext, obj: Any, inline_limit: int | None = None) -> Any:
    """A copy by value; a value over ``inline_limit`` bytes is announced instead, for the
    client to READ in chunks (with progress and a chance to stop): ``(LARGE_MARKER, code,
    fields, sizes, snapshot)``, the snapshot by reference, freed when the client drops it."""
    if inline_limit is not None:
        plan = large_plan(obj, int(inline_limit))
        if plan is not None:
            code, fields, snapshot = plan
            return (LARGE_MARKER, code, fields, snapshot.sizes, snapshot)
    return ByValue(obj)


def _read(ctx: RequestContext, snapshot: Any, offset: int, length: int) -> Any:
    """Bytes of a snapshot that an OBTAIN announced (nothing else can be read)."""
    if type(snapshot) is not Snapshot:
        raise TypeError("READ reads a snapshot announced by OBTAIN")
    chunk = snapshot.read(offset, length)
    return ByValue(chunk) if type(chunk) is memoryview else chunk  # (bytes on the wire)


def _deliver(ctx: RequestContext, value: Any) -> Any:
    check_available(value)  # a TypeError for the client, not a value we cannot use
    return value


def _refused(ctx: RequestContext, refusal: Any = None) -> Any:
    """A request whose values this side refused while decoding it (unboxing.py): it fails
    with the reason. A Refusal is made locally only; a peer sending this opcode gets an
    unknown-opcode error like any other."""
    if type(refusal) is not Refusal:
        raise ProtocolError(f"unknown request opcode {REFUSED}")
    raise refusal.error


MAX_BATCH = 100_000  # calls in one BATCH request


def _batch(ctx: RequestContext, request: tuple) -> BatchOutcomes:
    """Run the calls in order; each failure is kept with its call, the rest still run. A
    KeyboardInterrupt (a cancel of the whole batch) ends it. ``request`` is (targets,
    calls), each call (target index, name or None, args, kwargs). The policy decides once
    per target and name in a batch; the attribute itself is read for every call."""
    if type(request) is not tuple or len(request) != 2:
        raise ValueError("a batch is (targets, calls)")
    targets, calls = request
    if type(targets) is not tuple or type(calls) is not tuple or len(calls) > MAX_BATCH:
        raise ValueError(f"a batch is a sequence of at most {MAX_BATCH} calls")
    outcomes: list[tuple[int, Any]] = []
    append = outcomes.append
    resolved: dict[tuple[int, str], str] = {}
    resolve = ctx.policy.resolve
    for call in calls:
        try:
            if type(call) is not tuple or len(call) != 4:
                raise ValueError("a batched call is (target, name, args, kwargs)")
            index, name, args, kwargs = call
            if type(index) is not int or not 0 <= index < len(targets):
                raise ValueError("a batched call names a target the batch does not hold")
            if type(args) is not tuple or not (kwargs is None or type(kwargs) is dict):
                raise ValueError("a batched call's arguments are a tuple and a dict")
            target = targets[index]
            if name is None:
                append((1, _call(ctx, target, args, kwargs)))
                continue
            if type(name) is not str:
                raise AccessDenied("attribute names must be strings")
            allowed = resolved.get((index, name))
            if allowed is None:
                allowed = resolved[index, name] = resolve(target, name)
            function = getattr(target, allowed)
            append((1, function(*args, **kwargs) if kwargs else function(*args)))
        except Exception as exc:  # noqa: BLE001 - each call's failure goes back with it
            append((0, exc))
    return BatchOutcomes(outcomes)


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
    Op.DELIVER: _deliver,
    Op.DISPLAY: _display,
    Op.COMPLETE: _complete,
    Op.OINFO: _oinfo,
    Op.KEYS: _keys,
    Op.CHILDREN: _children,
    Op.BATCH: _batch,
    REFUSED: _refused,
}

__all__ = ["HANDLERS", "LARGE_MARKER", "RequestContext"]

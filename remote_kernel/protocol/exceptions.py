"""Exceptions on the wire: what a peer learns of an exception raised here, and the local
exception built from what a peer sends (``Boxer.box_exception`` / the EXC ext value).

Wire format: the EXC ext value is a msgpack array

    [module, qualname, args, message, reserved, frames, builtin_base,
     attributes, notes, cause, context, suppress_context]

    module, qualname  the class, ``type(exc).__module__`` and ``__qualname__``
    args              ``exc.args`` by value, or ``[message]`` when they cannot be copied
    message           ``str(exc)``
    reserved          "" (version 0 sent the formatted traceback; it is rebuilt from frames)
    frames            outermost first: [filename, lineno, function, line, side, where,
                      context_start, context, variables]; ``side`` is the id of the process
                      the frame ran in (``frames.SIDE``), ``where`` the sender's name for that
                      process ("" when it is the sender); ``context`` a few source lines, the
                      first being line ``context_start``; ``variables`` [name, repr] pairs of
                      the line's names and ``arguments`` the call's ("(a=3, b=0)"), empty
                      unless the receiver asked (``Op.VARIABLES``)
    builtin_base      the nearest builtin class of the exception ("LookupError")
    attributes        {name: value}: public instance attributes and the standard ones
                      (``OSError.errno``, ``SyntaxError.lineno``, ``StopIteration.value``...),
                      by value; anything that cannot be copied is left out, never a reference
    notes             the PEP 678 notes (strings)
    cause, context    EXC or nil: ``__cause__`` and ``__context__``, each with its own
                      frames, at most ``MAX_CHAIN`` deep; context ``true``: the same as cause
    suppress_context  ``__suppress_context__``

A version-0 peer sends only the first 7 items; the rest default to empty. An exception
group's sub-exceptions are its attribute ``exceptions``: a list of EXC values, first of the
attributes (``exception_groups.py``); a peer that does not know groups keeps them as a plain
attribute. Linked exceptions (chain and sub-exceptions) share the bounds: at most
``MAX_CHAIN`` levels below the one raised, ``MAX_EXCEPTIONS`` in all, ``MAX_GROUP`` per group;
the sender cuts there, the receiver refuses more.

Decoding trusts nothing: every field is type-checked (``ProtocolError`` otherwise), counts
and lengths are bounded, an exception may not carry references (no netref hides in it), the
module a peer names is never imported and no code of the peer's choosing runs: the local
class is a builtin exception or one found in ``sys.modules`` (without a metaclass, a Python
``__new__`` or ``__init_subclass__``), subclassed together with ``RemoteError`` and
instantiated without its ``__init__``. Any other class becomes a ``RemoteError`` subclass
named after it that derives from the nearest builtin base; a ``BaseException`` that is not
an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) always does, so ``except
Exception`` catches it and a peer can neither stop nor exit this process. The local
classes are cached per connection (``Boxer.exception_classes``), bounded: past
``MAX_CLASSES`` names no class is made per name any more (each cost ~1.5 KiB, four times
the exception itself), and exceptions of further names share one class per builtin base
(a ``RemoteError`` that is also a ``ValueError``...; ``remote_type`` keeps their name).
"""

from __future__ import annotations

import builtins
import sys
import types
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from msgpack import ExtType

from remote_kernel import errors
from remote_kernel.errors import ProtocolError, RemoteError, RemoteFrame, RemoteTraceback
from remote_kernel.protocol import exception_groups as _groups
from remote_kernel.protocol import frames as _frames
from remote_kernel.protocol.codec import pack
from remote_kernel.protocol.messages import Ext
from remote_kernel.protocol.values import is_numpy
from remote_kernel.protocol.variables import MAX_ARGUMENTS, MAX_REPR, MAX_VARIABLES

if TYPE_CHECKING:
    from remote_kernel.protocol.boxing import Boxer
    from remote_kernel.protocol.unboxing import Unboxer

MAX_CHAIN = 8  # levels of linked exceptions (cause, context, group members) below the one raised
MAX_EXCEPTIONS = 512  # exceptions in one, linked ones included (a full tree of causes and contexts)
MAX_FRAMES = 100  # innermost frames kept per exception
MAX_ATTRIBUTES = 32
MAX_NOTES = 32
MAX_TEXT = 64 * 1024  # characters of a message, a note, a source line
MAX_NAME = 1024  # characters of a module, class, file or function name
MAX_CONTEXT = 16  # source lines around a frame's line
MAX_VALUE = 16 * 1024  # bytes (roughly) of one attribute's value or of the args
MAX_CLASSES = 256  # local classes cached per connection
FIELDS = 12

# Never set from a peer: the exception protocol's own names and RemoteError's.
_RESERVED = frozenset({
    "args", "with_traceback", "add_note", "remote_type", "remote_traceback", "remote_frames",
    "peer", "__notes__", "__cause__", "__context__", "__suppress_context__", "__traceback__",
    "__dict__", "__class__",
})
# Standard attributes not worth a copy: a reference to some local object, or write-only.
_SKIPPED_STANDARD = frozenset({"obj", "characters_written", "print_file_and_line"})
_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType)


# -- encoding ----------------------------------------------------------------------------


class _Sending:
    """What one exception sent so far holds: the ids met (a chain may loop) and the count."""

    __slots__ = ("count", "seen")

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.count = 0


def encode(boxer: Boxer, exc: BaseException, depth: int = 0,
           sending: _Sending | None = None) -> ExtType:
    """The EXC ext value of ``exc`` (with its chain and sub-exceptions) for the peer."""
    sending = _Sending() if sending is None else sending
    sending.seen.add(id(exc))
    sending.count += 1
    cls = type(exc)
    message = _safe_str(exc)[:MAX_TEXT]
    args = _by_value(boxer, tuple(getattr(exc, "args", ()) or ()))
    frames = _frames_out(exc, boxer.include_variables) if boxer.include_traceback else []
    cause = _linked(boxer, exc.__cause__, depth, sending)
    context: ExtType | bool | None
    if exc.__context__ is not None and exc.__context__ is exc.__cause__:
        context = True if cause is not None else None  # `raise ... from e` in `except e`
    else:
        context = _linked(boxer, exc.__context__, depth, sending)
    attributes, notes = _attributes_out(boxer, exc), _notes_out(exc)
    group = _groups.members_out(exc)
    if group is not None:
        attributes, notes = _with_members(boxer, group, depth, sending, attributes, notes)
    return ExtType(Ext.EXC, pack([
        str(getattr(cls, "__module__", None) or "builtins")[:MAX_NAME],
        str(getattr(cls, "__qualname__", cls.__name__))[:MAX_NAME],
        args if args is not None else [message],
        message, "", frames, _builtin_base_name(cls),
        attributes, notes, cause, context,
        bool(exc.__suppress_context__),
    ]))


def _with_members(boxer: Boxer, group: tuple[tuple[BaseException, ...], int], depth: int,
                  sending: _Sending, attributes: dict[str, Any],
                  notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A group's attributes with its sub-exceptions first (an attribute past the bound is
    dropped, not them), and a note when some of them were not sent."""
    members: list[ExtType] = []
    for member in group[0] if depth < MAX_CHAIN else ():
        if sending.count >= MAX_EXCEPTIONS:
            break
        members.append(encode(boxer, member, depth + 1, sending))
    attributes.pop(_groups.MEMBERS, None)
    if members:
        attributes = {_groups.MEMBERS: members,
                      **dict(list(attributes.items())[:MAX_ATTRIBUTES - 1])}
    total = group[1]
    if len(members) < total:
        notes = [*notes[:MAX_NOTES - 1], f"({total - len(members)} of its {total} "
                                          f"sub-exceptions were not sent)"]
    return attributes, notes


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _linked(boxer: Boxer, linked: BaseException | None, depth: int,
            sending: _Sending) -> ExtType | None:
    if (linked is None or isinstance(linked, RemoteTraceback) or depth >= MAX_CHAIN
            or id(linked) in sending.seen or sending.count >= MAX_EXCEPTIONS):
        return None
    return encode(boxer, linked, depth + 1, sending)


def _by_value(boxer: Boxer, value: Any) -> Any:
    """``value`` boxed by value, or None when it cannot be copied or is too large."""
    if not _small(value, MAX_VALUE):
        return None
    try:
        return boxer.box_plain_value(value)
    except (TypeError, ValueError, ProtocolError, RecursionError):
        return None


def _small(value: Any, budget: int) -> bool:
    """Whether ``value`` is, roughly, plain data under ``budget`` bytes. Looks only at the
    types a copy accepts (never calls into other objects: one may be a netref)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > 4096:
            return False
        kind = type(item)
        if kind is str or kind is bytes or kind is bytearray:
            budget -= len(item)
        elif kind is tuple or kind is list or kind is set or kind is frozenset:
            stack.extend(item)
            budget -= 8
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
            budget -= 8
        elif is_numpy(item):
            budget -= int(item.nbytes)
        else:
            budget -= 16
        if budget < 0:
            return False
    return True


def _frames_out(exc: BaseException, with_variables: bool) -> list[list[Any]]:
    side = _frames.SIDE
    out: list[list[Any]] = [
        [filename, lineno, function, line, side, "", first, list(context),
         [list(pair) for pair in variables], arguments]
        for filename, lineno, function, line, first, context, variables, arguments
        in _frames.user_frames_with_source(exc.__traceback__, with_variables)]
    if isinstance(exc, RemoteError):  # its frames on the peer come after ours (inner)
        out += [[frame.filename, frame.lineno, frame.function, frame.line,
                 frame.side, frame.where, frame.context_start, list(frame.context),
                 [list(pair) for pair in frame.variables] if with_variables else [],
                 frame.arguments if with_variables else ""]
                for frame in exc.remote_frames]
    return out[-MAX_FRAMES:]


@lru_cache(maxsize=512)
def standard_attributes(cls: type) -> frozenset[str]:
    """The attributes builtin exception classes define in C (``errno``, ``lineno``...)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if getattr(klass, "__module__", None) == "builtins" and klass is not RemoteError:
            names.update(name for name, value in vars(klass).items()
                         if isinstance(value, _DESCRIPTORS))
    return frozenset(name for name in names - _RESERVED - _SKIPPED_STANDARD
                     if not name.startswith("_"))


def _attributes_out(boxer: Boxer, exc: BaseException) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in sorted(standard_attributes(type(exc))):
        try:
            values[name] = getattr(exc, name)  # C descriptors of builtin classes
        except Exception:  # noqa: S112 - an attribute that is not set is not sent
            continue
    instance = vars(exc)
    for name in list(instance):
        if isinstance(name, str) and not name.startswith("_") and name not in _RESERVED:
            values.setdefault(name, instance[name])
    out: dict[str, Any] = {}
    for name, value in values.items():
        if len(out) >= MAX_ATTRIBUTES:
            break
        if value is None or len(name) > MAX_NAME:
            continue
        boxed = _by_value(boxer, value)
        if boxed is not None:
            out[name] = boxed
    return out


def _notes_out(exc: BaseException) -> list[str]:
    with errors.traceback_note_hidden():  # the note with our remote frames is rebuilt there
        try:
            notes = getattr(exc, "__notes__", None)
        except Exception:
            return []
    if not isinstance(notes, (list, tuple)):
        return []
    return [note[:MAX_TEXT] for note in notes if type(note) is str][:MAX_NOTES]


def _builtin_base_name(cls: type) -> str:
    return next((klass.__name__ for klass in cls.__mro__
                 if getattr(klass, "__module__", None) == "builtins"), "")


# -- decoding ----------------------------------------------------------------------------


def decode(boxer: Unboxer, data: bytes) -> BaseException:
    """The local exception for a peer's EXC value; ProtocolError if it is malformed."""
    if not boxer.exception_depth:  # the one raised: count it and all it links to
        boxer.exception_count = 0
    boxer.exception_count += 1
    if boxer.exception_count > MAX_EXCEPTIONS:
        raise ProtocolError(f"an exception holding more than {MAX_EXCEPTIONS} exceptions")
    boxer.exception_depth += 1
    try:
        if boxer.exception_depth > MAX_CHAIN + 1:
            raise ProtocolError("exception chain nested too deeply")
        items = boxer.unpack_tuple(data)
    finally:
        boxer.exception_depth -= 1
    if not 7 <= len(items) <= FIELDS:
        raise ProtocolError("malformed exception")
    items = items + (None,) * (FIELDS - len(items))
    (module, qualname, args, message, _reserved, frames, builtin_base, attributes, notes,
     cause, context, suppress) = items
    if not (_is_name(module) and _is_name(qualname) and _is_name(builtin_base)):
        raise ProtocolError("malformed exception class")
    peer = boxer.peer_name()
    message = _text(message)
    group = _groups.members_in(attributes, message, MAX_TEXT)
    exc = _instantiate(boxer.exception_classes, module, qualname, builtin_base, group)
    try:
        if group is not None and _groups.is_group_class(type(exc)):
            exc.args = (group[0], list(group[1]))  # as a local group's
        else:
            exc.args = args if type(args) is tuple else (message,)
    except Exception:
        exc.args = (message,)
    state = exc.__dict__
    state["_rk_message"] = message
    state["remote_type"] = f"{module}.{qualname}"
    state["remote_frames"] = _frames_in(frames, peer)
    state["peer"] = peer
    _set_attributes(exc, attributes)
    state["_rk_remote_notes"] = _notes_in(notes)
    _set_chain(exc, cause, context, suppress)
    if not errors.HAS_NOTES and boxer.exception_depth == 0:
        _hang_traceback(exc)
    return exc


def _is_name(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_NAME


def _text(value: Any) -> str:
    """A peer's message as text, whatever it sent."""
    if type(value) is str:
        return value[:MAX_TEXT]
    if type(value) is bytes:
        return value[:MAX_TEXT].decode("utf-8", "replace")
    return repr(value)[:MAX_TEXT]  # plain data only: an exception carries no references


_FRAME_DEFAULTS = ("", "", 0, (), (), "")  # side, where, context_start, context, variables,
# arguments


def _frames_in(frames: Any, peer: str) -> list[RemoteFrame]:
    if frames is None:
        return []
    if type(frames) is not tuple:
        raise ProtocolError("malformed exception frames")
    here = _frames.SIDE
    out: list[RemoteFrame] = []
    for frame in frames[-MAX_FRAMES:]:
        if type(frame) is not tuple or len(frame) < 4:
            raise ProtocolError("malformed exception frame")
        filename, lineno, function, line = frame[:4]
        given = frame[4:10]  # a peer may send fewer: the rest take their defaults
        side, where, start, context, variables, arguments = \
            given + _FRAME_DEFAULTS[len(given):]
        if not (_is_name(filename) and type(lineno) is int and _is_name(function)
                and type(line) is str and type(side) is str and type(where) is str
                and type(start) is int and type(context) is tuple
                and all(type(text) is str for text in context)
                and type(arguments) is str and type(variables) is tuple and all(
                    type(pair) is tuple and len(pair) == 2 and type(pair[0]) is str
                    and type(pair[1]) is str for pair in variables)):
            raise ProtocolError("malformed exception frame")
        where = "" if side and side == here else (where[:MAX_NAME] or peer)
        out.append(RemoteFrame(filename, lineno, function, line[:MAX_TEXT], where,
                               side[:64], start, tuple(t[:MAX_TEXT] for t in
                                                       context[:MAX_CONTEXT]),
                               tuple((name[:MAX_NAME], value[:MAX_REPR])
                                     for name, value in variables[:MAX_VARIABLES]),
                               arguments[:MAX_ARGUMENTS]))
    return out


def _notes_in(notes: Any) -> tuple[str, ...]:
    if notes is None:
        return ()
    if type(notes) is not tuple or not all(type(note) is str for note in notes):
        raise ProtocolError("malformed exception notes")
    return tuple(note[:MAX_TEXT] for note in notes[:MAX_NOTES])


def _set_attributes(exc: BaseException, attributes: Any) -> None:
    if attributes is None:
        return
    if type(attributes) is not dict:
        raise ProtocolError("malformed exception attributes")
    cls = type(exc)
    standard = standard_attributes(cls)
    for name, value in list(attributes.items())[:MAX_ATTRIBUTES]:
        if type(name) is not str or not name.isidentifier() or name in _RESERVED:
            continue
        if name in standard:
            try:
                setattr(exc, name, value)  # a C descriptor of a builtin class: no user code
            except (TypeError, ValueError, AttributeError, OverflowError):
                pass
        elif not name.startswith("_") and not _class_behaviour(cls, name):
            exc.__dict__[name] = value


def _class_behaviour(cls: type, name: str) -> bool:
    """Whether the class defines ``name`` as behaviour (a method, a property, any
    descriptor): a value from the peer would hide it, or be hidden by it. A plain class
    value (a default) is replaced by the instance's, as on the peer."""
    for klass in cls.__mro__:
        namespace = vars(klass)
        if name in namespace:
            value = namespace[name]
            return hasattr(type(value), "__get__") or callable(value)
    return False


def _set_chain(exc: BaseException, cause: Any, context: Any, suppress: Any) -> None:
    if context is True:
        context = cause
    for linked in (cause, context):
        if linked is not None and not isinstance(linked, BaseException):
            raise ProtocolError("malformed exception chain")
    if suppress is not None and type(suppress) is not bool:
        raise ProtocolError("malformed exception chain")
    exc.__cause__ = cause
    exc.__context__ = context
    exc.__suppress_context__ = bool(suppress)


def _hang_traceback(exc: BaseException) -> None:
    """Python 3.10: the remote frames as the cause of the innermost printed exception."""
    chain = errors.chain_of(exc)
    if any(getattr(linked, "remote_frames", None) for linked, _ in chain) \
            and isinstance(exc, RemoteError):
        chain[0][0].__cause__ = RemoteTraceback(exc)


# -- the local class ---------------------------------------------------------------------


def _instantiate(cache: dict[tuple[str, str, str, bool], type[BaseException]], module: str,
                 qualname: str, builtin_base: str,
                 group: _groups.Members | None = None) -> BaseException:
    """An instance of the local class for a remote type, built without ``__init__``; a
    group class only when ``group`` holds its message and sub-exceptions."""
    key = (module, qualname, builtin_base, group is not None)
    cls = cache.get(key)
    if cls is not None:
        exc = _new(cls, group)
        if exc is not None:
            return exc
    elif len(cache) >= MAX_CLASSES:
        exc = _new(_shared_class(module, qualname, builtin_base, group is not None), group)
        if exc is not None:
            return exc
    for cls in _candidates(module, qualname, builtin_base, group is not None):
        exc = _new(cls, group)
        if exc is not None:  # else the class cannot exist without arguments: the next one
            if key in cache or len(cache) < MAX_CLASSES:
                cache[key] = cls
            return exc
    raise ProtocolError(f"cannot build a local {qualname} exception")


def _shared_class(module: str, qualname: str, builtin_base: str,
                  grouped: bool) -> type[BaseException]:
    """The class exceptions of names past a connection's bound share: one per builtin
    base, made once per process (there are a few dozen builtin bases, whatever the peer
    names)."""
    return _class_sharing(_nearest_builtin(module, qualname, builtin_base, grouped)[1])


@lru_cache(maxsize=128)  # keyed by builtin classes: a few dozen at most
def _class_sharing(base: type[BaseException] | None) -> type[BaseException]:
    namespace = {"__module__": RemoteError.__module__, "__qualname__": "RemoteError"}
    if base is not None:
        try:
            return type("RemoteError", (RemoteError, base), _with_derive(namespace, (base,)))
        except TypeError:  # a layout conflict: RemoteError alone
            pass
    return type("RemoteError", (RemoteError,), namespace)


def _new(cls: type[BaseException], group: _groups.Members | None = None) -> BaseException | None:
    try:
        if _groups.is_group_class(cls):  # BaseExceptionGroup.__new__ needs its arguments
            exc = _groups.new_group(cls, group) if group is not None else None
        else:
            exc = cls.__new__(cls)
    except Exception:
        return None
    return exc if isinstance(exc, cls) else None


def local_class(module: str, qualname: str, builtin_base: str = "") -> type[BaseException]:
    """The local class standing for a remote exception type: a RemoteError subclass with
    the remote type's name. Never imports ``module``."""
    return next(_candidates(module, qualname, builtin_base))


def _candidates(module: str, qualname: str, builtin_base: str,
                grouped: bool = False) -> Iterator[type[BaseException]]:
    """Local classes for a remote type, best first: a subclass of the original class, of
    the nearest builtin base, of RemoteError alone. An exception group's classes only when
    ``grouped`` (its sub-exceptions arrived)."""
    name = qualname.rpartition(".")[2] or "RemoteException"
    namespace = {"__module__": module, "__qualname__": qualname}
    original, base = _nearest_builtin(module, qualname, builtin_base, grouped)
    bases_tried: list[tuple[type, ...]] = []
    if original is not None and _adoptable(original) \
            and (grouped or not _groups.is_group_class(original)):
        bases_tried.append((original,) if issubclass(original, RemoteError)
                           else (RemoteError, original))
    if base is not None and (RemoteError, base) not in bases_tried:
        bases_tried.append((RemoteError, base))
    bases_tried.append((RemoteError,))
    for bases in bases_tried:
        try:
            yield type(name, bases, _with_derive(dict(namespace), bases))
        except TypeError:  # a layout conflict, or a class that cannot be subclassed
            continue


def _nearest_builtin(module: str, qualname: str, builtin_base: str,
                     grouped: bool) -> tuple[type[BaseException] | None,
                                             type[BaseException] | None]:
    """The original class if this side has it, and the builtin class a stand-in derives
    from: the original's nearest, else the peer's word."""
    original = known_class(module, qualname)
    name = builtin_base if original is None else _builtin_base_name(original)
    return original, _builtin_exception(name, grouped)


def _with_derive(namespace: dict[str, Any], bases: tuple[type, ...]) -> dict[str, Any]:
    if _groups.needs_derive(bases):
        namespace["derive"] = _groups.derive_part
    return namespace


def loaded_class(module: str, qualname: str) -> type | None:
    """The class ``module.qualname`` if this process already has it: looked up in
    ``sys.modules`` through namespaces only, never imported, no attribute hook run (a
    peer names it; the exception classes and enum members of a copy are found so)."""
    found: Any = sys.modules.get(module)
    if not isinstance(found, types.ModuleType):
        return None
    for part in qualname.split("."):
        if isinstance(found, types.ModuleType):
            # Not vars(): a lazily loaded module would load on attribute access.
            namespace = object.__getattribute__(found, "__dict__")
        elif isinstance(found, type):
            namespace = type.__getattribute__(found, "__dict__")
        else:
            return None
        found = namespace.get(part)
    return found if isinstance(found, type) else None


def known_class(module: str, qualname: str) -> type[BaseException] | None:
    """The exception class ``module.qualname`` if this process already has it."""
    found = vars(builtins).get(qualname) if module == "builtins" \
        else loaded_class(module, qualname)
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def _adoptable(original: type[BaseException]) -> bool:
    """Whether a subclass of ``original`` can be made and instantiated without running any
    of its code: an Exception, no metaclass, no Python ``__new__``/``__init_subclass__``."""
    if not issubclass(original, Exception) or type(original) is not type:
        return False
    for klass in original.__mro__:
        if getattr(klass, "__module__", None) == "builtins":
            continue
        namespace = vars(klass)
        if "__init_subclass__" in namespace or "__new__" in namespace:
            return False
    return True


def _builtin_exception(name: str, grouped: bool = False) -> type[BaseException] | None:
    """The builtin ``Exception`` subclass named ``name`` (not Exception itself); an
    exception group class (``BaseExceptionGroup`` too: a stand-in is an Exception) only
    when ``grouped``. KeyboardInterrupt, SystemExit...: None, an Exception here."""
    found = vars(builtins).get(name)
    if not isinstance(found, type) or found is Exception:
        return None
    if _groups.is_group_class(found):
        return found if grouped else None
    return found if issubclass(found, Exception) else None

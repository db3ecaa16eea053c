"""Exception groups on the wire (PEP 654, Python 3.11+): the sub-exceptions of a
``BaseExceptionGroup`` travel as its standard attribute ``exceptions``, a list of EXC
values (``protocol/exceptions.py``), each decoded as any remote exception is. A peer that
does not know this (an older version, or Python 3.10, which has no exception groups) keeps
them as a plain attribute ``exceptions`` of a ``RemoteError``.

A received group is an instance of its local class (``ExceptionGroup``, a subclass this side
has, or one named after the peer's class deriving from the nearest builtin group) and of
``RemoteError``, built through ``BaseExceptionGroup.__new__`` (C code: no ``__init__``, no
code of the peer's choosing). It is always an ``Exception`` here, as every received
exception is, so its sub-exceptions are too and ``except*`` splits it as a local group.
Its parts (``split``, ``subgroup``, what ``except*`` binds) keep its class, peer and
remote frames through ``derive``, unless the local class defines its own.
"""

from __future__ import annotations

import builtins
from typing import Any

GROUP: type[BaseException] | None = vars(builtins).get("BaseExceptionGroup")  # 3.11+
MAX_GROUP = 64  # sub-exceptions sent per group (Python prints 15 of them)
MEMBERS = "exceptions"  # the attribute carrying them

Members = tuple[str, tuple[BaseException, ...]]  # (message, sub-exceptions)


def is_group_class(cls: type) -> bool:
    return GROUP is not None and isinstance(cls, type) and issubclass(cls, GROUP)


def members_out(exc: BaseException) -> tuple[tuple[BaseException, ...], int] | None:
    """The sub-exceptions of a group to send (at most ``MAX_GROUP``) and how many there
    are in all; None when ``exc`` is not a group."""
    if GROUP is None or not isinstance(exc, GROUP):
        return None
    members = tuple(member for member in exc.exceptions  # type: ignore[attr-defined]
                    if isinstance(member, BaseException))
    return members[:MAX_GROUP], len(members)


def members_in(attributes: Any, message: str, max_text: int) -> Members | None:
    """What a group is built from: its message and the received sub-exceptions, when the
    attributes hold at least one (else the exception cannot be a group here)."""
    if GROUP is None or type(attributes) is not dict:
        return None
    members = attributes.get(MEMBERS)
    if type(members) is not tuple or not members \
            or not all(isinstance(member, BaseException) for member in members):
        return None
    text = attributes.get("message")
    return (text[:max_text] if type(text) is str else message), members[:MAX_GROUP]


def new_group(cls: type[BaseException], group: Members) -> BaseException:
    """An instance of a group class, without its ``__init__`` or any Python ``__new__``."""
    assert GROUP is not None  # noqa: S101 - only called for group classes
    return GROUP.__new__(cls, *group)  # type: ignore[call-overload,no-any-return]


def needs_derive(bases: tuple[type, ...]) -> bool:
    """Whether the class made on ``bases`` should get ``derive_part``: a group whose local
    classes keep the stdlib's ``derive`` (which makes a plain ``BaseExceptionGroup``)."""
    if GROUP is None or not any(issubclass(base, GROUP) for base in bases):
        return False
    own = GROUP.derive  # type: ignore[attr-defined]
    return all(getattr(base, "derive", own) is own for base in bases)


# What a part of a received group shares with it (the message is computed for the part).
_SHARED = ("remote_type", "remote_frames", "peer", "_rk_remote_notes", "_rk_rendering",
           "_rk_note")


def derive_part(self: BaseException, excs: Any) -> BaseException:
    """A part of this received group (``split``, ``subgroup``, ``except*``): the same local
    class, peer and remote frames. The stdlib then copies the notes, the chain and the
    traceback onto it."""
    self.__notes__  # noqa: B018 - computes the note of our frames, which the part's copy shares
    part = new_group(type(self), (self.message, excs))  # type: ignore[attr-defined]
    state, mine = part.__dict__, self.__dict__
    for name in _SHARED:
        if name in mine:
            state[name] = mine[name]
    return part

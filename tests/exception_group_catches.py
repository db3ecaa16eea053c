"""``except*`` (Python 3.11+ syntax), in a module of its own: imported only by tests that skip
on Python 3.10, where this file would not compile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def caught_by_except_star(call: Callable[[], Any]) -> dict[str, BaseExceptionGroup]:
    """What each ``except*`` clause of a user's code binds when ``call`` raises a group."""
    caught: dict[str, BaseExceptionGroup] = {}
    try:
        call()
    except* ValueError as group:
        caught["ValueError"] = group
    except* KeyError as group:
        caught["KeyError"] = group
    except* Exception as group:
        caught["Exception"] = group
    return caught

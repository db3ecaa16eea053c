"""What the error tests raise on a real server: imported there through a classic
connection, and here too for the cases where this side knows the original class."""

from __future__ import annotations

import builtins
import json
import threading
from typing import Any

TABLE = {"alpha": 1}


class InstrumentFault(Exception):
    """A custom exception with attributes, as an instrument library raises them."""

    channel: int | None = None  # a class default, set per instance

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.handle = threading.Lock()  # cannot be copied: left out
        self._private = "stays over there"


def lookup(key: str) -> int:
    try:
        return TABLE[key]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


def lookup_implicitly(key: str) -> int:
    try:
        return TABLE[key]
    except KeyError:
        raise ValueError(f"no entry {key!r}")  # noqa: B904 - the implicit chain on purpose


def lookup_from_none(key: str) -> int:
    try:
        return TABLE[key]
    except KeyError:
        raise LookupError(f"no entry {key!r}") from None


def chain_of(depth: int) -> None:
    try:
        if depth > 1:
            chain_of(depth - 1)
        else:
            raise ValueError("the first")
    except ValueError as exc:
        raise ValueError(f"level {depth}") from exc


def open_missing(path: str) -> Any:
    with open(path) as handle:
        return handle.read()


def fault(code: int) -> None:
    exc = InstrumentFault("the instrument reported a fault", code)
    exc.channel = 3
    exc.__notes__ = ["check the cable"]  # as add_note() does (Python 3.11+)
    raise exc


def parse(text: str) -> Any:
    return json.loads(text)


def outer(callback: Any) -> Any:
    """server -> the client's callback(inner) -> inner() here raises."""
    return callback(inner)


def inner() -> None:
    raise ValueError("deep down")


def remote_only() -> None:
    from tests.remote_only_errors import raise_sensor_fault

    raise_sensor_fault()


def interrupt_here() -> None:
    raise KeyboardInterrupt("pressed over there")


def exit_here() -> None:
    raise SystemExit(3)


# -- exception groups (Python 3.11+; the names exist on 3.10, where the tests skip) -------

_GROUP: type = vars(builtins).get("ExceptionGroup", Exception)
_BASE_GROUP: type = vars(builtins).get("BaseExceptionGroup", BaseException)


class BatchFailed(_GROUP):  # type: ignore[misc,valid-type]
    """A library's own exception group (the client has this module too)."""

    batch: str | None = None


def several() -> None:
    raise _GROUP("several", [ValueError("a"), KeyError("b")])


def nested_groups() -> None:
    raise _GROUP("outer", [ValueError("a"), _GROUP("inner", [KeyError("b"), TypeError("c")])])


def _failure(key: str) -> BaseException:
    try:
        lookup(key)  # RuntimeError("lookup failed") from KeyError(key)
    except RuntimeError as exc:
        return exc
    raise AssertionError("lookup did not fail")


def group_with_causes() -> None:
    raise _GROUP("lookups", [_failure("x"), _failure("y")])


def batch_failed() -> None:
    instrument = InstrumentFault("channel 2 is dead", 7)
    instrument.channel = 2
    group = BatchFailed("batch of 2 failed", [instrument, ValueError("bad sample")])
    group.batch = "morning"
    group.add_note("rerun the batch")
    raise group


def wide_group(count: int) -> None:
    raise _GROUP("wide", [ValueError(n) for n in range(count)])


def deep_group(depth: int) -> None:
    group = _GROUP("level 0", [ValueError("the innermost")])
    for level in range(1, depth):
        group = _GROUP(f"level {level}", [group])
    raise group


def base_group() -> None:
    raise _BASE_GROUP("stopped", [KeyboardInterrupt(), ValueError("v")])

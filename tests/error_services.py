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


def several() -> None:
    group = vars(builtins)["ExceptionGroup"]  # Python 3.11+
    raise group("several", [ValueError("a"), KeyError("b")])

"""Services the tests serve from real server processes."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import remote_kernel as rk

EVENTS: list[str] = []
INTERRUPTED: list[str] = []


class InstrumentError(Exception):
    """A custom exception class, to check remote qualified names."""


class Gadget:
    """A custom class with methods, a property and a context manager."""

    def __init__(self, value: int = 1) -> None:
        self.value = value
        self.entered = 0
        self.exited: list[Any] = []
        self._reads = 0

    def double(self, x: int) -> int:
        return 2 * x

    def add(self, x: int, y: int = 0) -> int:
        return self.value + x + y

    @property
    def reads(self) -> int:
        self._reads += 1
        return self._reads

    def __enter__(self) -> Gadget:
        self.entered += 1
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self.exited.append(exc_type.__name__ if exc_type else None)
        return False

    def fail(self) -> None:
        raise InstrumentError("the gadget failed on purpose")

    def __repr__(self) -> str:
        return f"Gadget(value={self.value})"


class TestService(rk.Service):
    __test__ = False

    def on_connect(self, conn: rk.Connection) -> None:
        self.conn = conn
        EVENTS.append("connect")

    def on_disconnect(self, conn: rk.Connection) -> None:
        EVENTS.append("disconnect")

    def exposed_echo(self, value: Any) -> Any:
        return value

    def exposed_events(self) -> tuple:
        return tuple(EVENTS)

    def exposed_pid(self) -> int:
        return os.getpid()

    def exposed_make_list(self, *items: Any) -> list:
        return list(items)

    def exposed_make_dict(self, **items: Any) -> dict:
        return dict(items)

    def exposed_make_set(self, *items: Any) -> set:
        return set(items)

    def exposed_gadget(self, value: int = 1) -> Gadget:
        return Gadget(value)

    exposed_Gadget = Gadget

    @rk.exposed
    def reset(self) -> str:
        return "reset done"

    def private_thing(self) -> str:
        return "should not be reachable"

    def exposed_call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def exposed_hash_of(self, value: Any) -> int:
        return hash(value)

    def exposed_call_twice_nested(self, fn: Any) -> Any:
        # server -> client fn(server_cb) -> server_cb() -> value
        return fn(lambda: "deepest")

    def exposed_table_size(self) -> int:
        return self.conn.local_object_count

    def exposed_sleep(self, seconds: float) -> str:
        try:
            time.sleep(seconds)
        except KeyboardInterrupt:
            INTERRUPTED.append(f"sleep({seconds})")
            raise
        return "slept"

    def exposed_interrupted(self) -> tuple:
        return tuple(INTERRUPTED)

    def exposed_busy_loop(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                pass
        except KeyboardInterrupt:
            INTERRUPTED.append("busy_loop")
            raise
        return "done"

    def exposed_raise_value_error(self, message: str) -> None:
        raise ValueError(message)

    def exposed_raise_custom(self) -> None:
        Gadget().fail()

    def exposed_call_later(self, fn: Any, delay: float) -> None:
        def later() -> None:
            time.sleep(delay)
            try:
                fn("from a server thread")
            except Exception:
                pass

        threading.Thread(target=later, daemon=True).start()

    def exposed_getattr(self, obj: Any, name: str) -> Any:
        return getattr(obj, name)

    def exposed_numpy_array(self, n: int) -> Any:
        import numpy

        return numpy.arange(n, dtype="float64").reshape(-1, 2) if n % 2 == 0 else \
            numpy.arange(n, dtype="int32")

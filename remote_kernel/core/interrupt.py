"""Interrupting the thread that runs a cancelled request.

Python can raise an exception in another thread only between bytecodes
(``PyThreadState_SetAsyncExc``), which leaves a thread blocked in ``time.sleep`` asleep.
So ``time.sleep`` is replaced once by a version that, inside a request that can be
cancelled, waits on that request's cancel event instead; outside requests it is the
original. Blocking C calls other than sleep finish before the interrupt lands.
"""

from __future__ import annotations

import ctypes
import threading
import time

original_sleep = time.sleep


class CancelToken:
    """Per running request; the event is only made when the request sleeps (cheap path)."""

    __slots__ = ("cancelled", "event")

    def __init__(self) -> None:
        self.cancelled = False
        self.event: threading.Event | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.event is not None:
            self.event.set()

    def wait(self, seconds: float) -> bool:
        if self.event is None:
            self.event = threading.Event()
            if self.cancelled:  # a cancel that came before the event existed
                self.event.set()
        return self.event.wait(seconds)


_tokens: dict[int, CancelToken] = {}


def _interruptible_sleep(seconds: float) -> None:
    token = _tokens.get(threading.get_ident())
    if token is None:
        return original_sleep(seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if token.wait(seconds):
        raise KeyboardInterrupt("interrupted by the peer")
    return None


def install_interruptible_sleep() -> None:
    if time.sleep is not _interruptible_sleep:
        time.sleep = _interruptible_sleep


def enter_request() -> tuple[CancelToken, CancelToken | None]:
    """Mark the current thread as running a cancellable request (requests nest)."""
    ident = threading.get_ident()
    token = CancelToken()
    previous = _tokens.get(ident)
    _tokens[ident] = token
    return token, previous


def leave_request(previous: CancelToken | None) -> None:
    ident = threading.get_ident()
    if previous is None:
        _tokens.pop(ident, None)
    else:
        _tokens[ident] = previous


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None clears it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None
    )

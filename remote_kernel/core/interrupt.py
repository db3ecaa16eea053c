"""Interrupting the thread that runs a cancelled request.

Python can raise an exception in another thread only between bytecodes
(``PyThreadState_SetAsyncExc``), which leaves a thread blocked in ``time.sleep`` asleep.
So while requests run, ``time.sleep`` is a version that, inside a request that can be
cancelled, waits on that request's cancel event instead; in any other thread it is the
original. It is put in place when a request starts in a process where none runs, and the
original is put back when the last one ends (unless someone else replaced it meanwhile):
no patch outlives the requests that need it. Blocking C calls other than sleep finish
before the interrupt lands.
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
        return _replaced[0](seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if token.wait(seconds):
        raise KeyboardInterrupt("interrupted by the peer")
    return None


_replaced = [original_sleep]  # what time.sleep was when it was last installed


def install_interruptible_sleep() -> None:
    current = time.sleep
    if current is not _interruptible_sleep:
        _replaced[0] = current
        time.sleep = _interruptible_sleep


def _restore_sleep() -> None:
    if time.sleep is _interruptible_sleep:
        time.sleep = _replaced[0]
    if _tokens:  # a request started meanwhile: it needs the interruptible sleep
        install_interruptible_sleep()


def enter_request() -> tuple[CancelToken, CancelToken | None]:
    """Mark the current thread as running a cancellable request (requests nest)."""
    ident = threading.get_ident()
    token = CancelToken()
    previous = _tokens.get(ident)
    _tokens[ident] = token
    if time.sleep is not _interruptible_sleep:
        install_interruptible_sleep()
    return token, previous


def leave_request(previous: CancelToken | None) -> None:
    ident = threading.get_ident()
    if previous is None:
        _tokens.pop(ident, None)
        if not _tokens:
            _restore_sleep()
    else:
        _tokens[ident] = previous


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None clears it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None
    )

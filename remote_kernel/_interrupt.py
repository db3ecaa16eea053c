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
_cancel_events: dict[int, threading.Event] = {}


def _interruptible_sleep(seconds: float) -> None:
    event = _cancel_events.get(threading.get_ident())
    if event is None:
        return original_sleep(seconds)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if event.wait(seconds):
        raise KeyboardInterrupt("interrupted by the peer")
    return None


def install_interruptible_sleep() -> None:
    if time.sleep is not _interruptible_sleep:
        time.sleep = _interruptible_sleep


def enter_request() -> threading.Event:
    """Mark the current thread as running a cancellable request."""
    event = threading.Event()
    _cancel_events[threading.get_ident()] = event
    return event


def leave_request(previous: threading.Event | None) -> None:
    ident = threading.get_ident()
    if previous is None:
        _cancel_events.pop(ident, None)
    else:
        _cancel_events[ident] = previous


def current_event() -> threading.Event | None:
    return _cancel_events.get(threading.get_ident())


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None clears it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None
    )

"""Interrupting the thread that runs a cancelled request.

Python can raise an exception in another thread only between bytecodes
(``PyThreadState_SetAsyncExc``), which leaves a thread blocked in ``time.sleep`` asleep.
So while requests run, ``time.sleep`` is a version that, inside a request that can be
cancelled, waits on that request's cancel event instead; in any other thread it is the
original. It is put in place when a request starts in a process where none runs, and the
original is put back by the watchdog (core/serving.py) once none has run for its check
interval, 0.1 s, unless someone else replaced it meanwhile: no patch outlives the requests
that need it by more than that. (Restoring it as each request ended and installing it again
for the next cost every request ~30 bytecodes.) Blocking C calls other than sleep finish
before the interrupt lands.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any

original_sleep = time.sleep


class CancelToken:
    """Per running request; the event is only made when the request sleeps (cheap path).
    The defaults are class attributes: making a token runs no Python ``__init__``."""

    cancelled: bool = False
    event: threading.Event | None = None

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


def restore_sleep_if_idle() -> None:
    """Put the original ``time.sleep`` back if no request runs (the watchdog's call)."""
    if _tokens or time.sleep is not _interruptible_sleep:
        return
    time.sleep = _replaced[0]
    if _tokens:  # a request started meanwhile: it needs the interruptible sleep
        install_interruptible_sleep()


def enter_request(ident: int) -> tuple[CancelToken, CancelToken | None]:
    """Mark thread ``ident`` (the current one) as running a cancellable request (requests
    nest)."""
    token = CancelToken()
    previous = _tokens.get(ident)
    _tokens[ident] = token
    if time.sleep is not _interruptible_sleep:
        install_interruptible_sleep()
    return token, previous


def leave_request(ident: int, previous: CancelToken | None) -> None:
    if previous is None:
        _tokens.pop(ident, None)  # the sleep stays patched until the watchdog restores it
    else:
        _tokens[ident] = previous


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None clears it)."""
    if _monitor is not None:
        _monitor.raise_in_thread(ident, exc_type)
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None
    )


class _LineInterrupter:
    """Python 3.13's interrupts, through ``sys.monitoring``.

    On 3.13 an exception set with ``PyThreadState_SetAsyncExc`` is raised where the loop
    jumps back, an instruction the compiler leaves outside the ``try`` it belongs to: the
    frame's ``except``/``finally``/``with`` are skipped and the exception surfaces in the
    caller (CPython issue 139622). So the exception is raised from a monitoring callback
    instead, at a point the exception table covers: the start of the next line the thread
    runs in one of the frames it had when interrupted, or the first instruction after a
    backward jump (a loop on one line). The events are switched on for those frames' code
    only while an interrupt is pending, and off again once none is.
    """

    def __init__(self, tool: int) -> None:
        monitoring = sys.monitoring
        self.tool = tool
        self.events = monitoring.events
        self.pending: dict[int, type[BaseException]] = {}
        self.after_jump: set[int] = set()  # threads to interrupt at their next instruction
        self.codes: set[Any] = set()
        self.lock = threading.Lock()
        monitoring.register_callback(tool, self.events.LINE, self._on_line)
        monitoring.register_callback(tool, self.events.JUMP, self._on_jump)
        monitoring.register_callback(tool, self.events.INSTRUCTION, self._on_instruction)

    def raise_in_thread(self, ident: int, exc_type: type[BaseException] | None) -> None:
        monitoring = sys.monitoring
        with self.lock:
            if exc_type is None:
                self.pending.pop(ident, None)
                self.after_jump.discard(ident)
                self._quiet()
                return
            frame = sys._current_frames().get(ident)
            if frame is None:
                return
            self.pending[ident] = exc_type
            wanted = self.events.LINE | self.events.JUMP
            while frame is not None:
                code = frame.f_code
                if code not in self.codes and code.co_filename != __file__:
                    monitoring.set_local_events(self.tool, code, wanted)
                    self.codes.add(code)
                frame = frame.f_back

    def _quiet(self) -> None:
        if not self.pending:
            for code in self.codes:
                sys.monitoring.set_local_events(self.tool, code, 0)
            self.codes.clear()

    def _deliver(self, ident: int) -> None:
        with self.lock:
            exc_type = self.pending.pop(ident, None)
            self.after_jump.discard(ident)
            self._quiet()
        if exc_type is not None:
            raise exc_type("interrupted by the peer")

    def _on_line(self, code: Any, line: int) -> Any:
        ident = threading.get_ident()
        if ident in self.pending:
            self._deliver(ident)
        return None

    def _on_jump(self, code: Any, offset: int, destination: int) -> Any:
        ident = threading.get_ident()
        if destination <= offset and ident in self.pending:
            # Not here (the jump may be outside the try): at the instruction it leads to.
            with self.lock:
                self.after_jump.add(ident)
                sys.monitoring.set_local_events(
                    self.tool, code, self.events.LINE | self.events.JUMP
                    | self.events.INSTRUCTION)
        return None

    def _on_instruction(self, code: Any, offset: int) -> Any:
        ident = threading.get_ident()
        if ident in self.after_jump:
            self._deliver(ident)
        return None


def _make_monitor() -> _LineInterrupter | None:
    if sys.version_info < (3, 13) or not hasattr(sys, "monitoring"):
        return None
    for tool in (4, 3):  # the ids PEP 669 leaves free for other tools
        try:
            sys.monitoring.use_tool_id(tool, "remote_kernel interrupts")
        except ValueError:
            continue
        return _LineInterrupter(tool)
    return None


_monitor = _make_monitor()

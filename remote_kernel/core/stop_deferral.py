"""A Stop (Ctrl-C, the notebook's Stop button) that comes while a message is being sent is
held back until the message is out.

A message cut in the middle wedges the stream: the peer reads the next message as the rest
of the cut one and nothing answers again (with a token, the frame counter is off as well).
So while a message that can take long to send goes out (one with large buffers, or a large
frame: a 64 MiB array over Wi-Fi), SIGINT only records that it came; once the last byte is
out the signal is raised again and the Stop happens as usual. The request is out by then,
so the caller cancels it on the peer like any Stop (``Connection.sync_request``). The first
Stop says so on stderr; a second one gives the message up, and with it the connection
(:class:`MessageCut`): a slow link is not a reason to be unable to stop.

Only the main thread gets SIGINT's ``KeyboardInterrupt``, and only it may install a signal
handler, so other threads send as they are. Messages too small to hold up the sending
thread are sent without it: installing the handler costs two system calls.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

DEFER_FROM = 256 * 1024  # bytes: messages at least this large are sent with Stop held back
HELD_BACK = ("remote_kernel: Stop comes once the message being sent is out; "
             "Stop again to close the connection instead\n")


class MessageCut(KeyboardInterrupt):
    """A second Stop while a message was going out: the message is given up half sent, so
    its connection cannot go on and is closed."""


@contextlib.contextmanager
def stop_held_back() -> Iterator[None]:
    """Around sending one message: SIGINT is recorded, then raised again at the end (a
    KeyboardInterrupt raised that way is marked as coming after the message went out)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):  # ignored, or the OS default: no Python code runs
        yield
        return
    came: list[Any] = []

    def held_back(signum: int, frame: Any) -> None:
        if came:
            raise MessageCut()
        came.append(signum)
        try:
            sys.stderr.write(HELD_BACK)
            sys.stderr.flush()
        except Exception:  # no stderr to speak to: the Stop still comes
            pass

    signal.signal(signal.SIGINT, held_back)
    try:
        yield
    except BaseException:
        # The message failed (the connection is lost): that error says it; the Stop adds
        # nothing to it.
        signal.signal(signal.SIGINT, handler)
        raise
    signal.signal(signal.SIGINT, handler)
    if came:
        try:
            signal.raise_signal(signal.SIGINT)  # the handler runs now, in this thread
        except KeyboardInterrupt as exc:
            exc.rk_message_sent = True  # type: ignore[attr-defined]
            raise


def message_was_sent(exc: BaseException) -> bool:
    """Whether a Stop was held back until its message was out (the request then runs)."""
    return getattr(exc, "rk_message_sent", False)


__all__ = ["DEFER_FROM", "MessageCut", "message_was_sent", "stop_held_back"]

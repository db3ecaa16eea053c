"""Frames of remote_kernel's own machinery are left out wherever a traceback is printed
(README.md, "Remote errors are as useful as local ones"): a remote error leaves the package
at the user's call without the frames of the request and the wait, so ``traceback``,
``logging.exception`` and pytest (tests/test_remote_errors.py, its pytest run) show the
user's frames, then the remote ones. Against a real server process. Python 3.10 re-raises with the traceback it caught (there the frames
stay): the checks of what is left out run on 3.11 and later."""

from __future__ import annotations

import io
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

import remote_kernel as rk

pytestmark = pytest.mark.timeout(60)

PACKAGE = str(Path(rk.__file__).resolve().parent)
TRIMS = sys.version_info >= (3, 11)

SOURCE = '''
class Thing:
    def method(self, x):
        return 1 / x
    def __len__(self):
        raise ValueError("no length")
    def __getattr__(self, name):
        raise KeyError(name)
    def __call__(self, x):
        return 1 / x

def explode(x):
    return 1 / x

thing = Thing()
'''


def _ours(exc: BaseException) -> list[str]:
    """The frames of the package in ``exc``'s local traceback."""
    return [f"{frame.filename}:{frame.name}" for frame in traceback.extract_tb(exc.__traceback__)
            if frame.filename.startswith(PACKAGE)]


def _failure(call: Any) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test looks at whatever came
        return exc
    raise AssertionError("nothing was raised")


@pytest.mark.parametrize("gesture", [
    "call", "method", "forwarded dunder", "attribute", "conn.call", "conn.eval",
    "conn.execute", "obtain"])
def test_a_remote_error_shows_no_frame_of_the_package(classic: rk.Connection,
                                                      gesture: str) -> None:
    classic.execute(SOURCE)
    namespace = classic.namespace
    thing = namespace["thing"]
    calls = {
        "call": lambda: namespace["explode"](0),
        "method": lambda: thing.method(0),
        "forwarded dunder": lambda: len(thing),
        "attribute": lambda: thing.missing,
        "conn.call": lambda: classic.call(thing, "method", 0),
        "conn.eval": lambda: classic.eval("1 / 0"),
        "conn.execute": lambda: classic.execute("raise ValueError('here')"),
        "obtain": lambda: rk.obtain(namespace["__builtins__"]),
    }
    exc = _failure(calls[gesture])
    assert isinstance(exc, (rk.RemoteError, TypeError))
    frames = traceback.extract_tb(exc.__traceback__)
    assert frames[0].name == "_failure"  # the user's frames are all kept
    if TRIMS:
        assert _ours(exc) == [], _ours(exc)


def test_print_exc_and_logging_read_as_a_local_error(classic: rk.Connection) -> None:
    classic.execute(SOURCE)
    explode = classic.namespace["explode"]
    stream = io.StringIO()
    logger = logging.getLogger("tests.local_frames")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        try:
            explode(0)
        except ZeroDivisionError:
            printed = traceback.format_exc()
            logger.exception("the call failed")
    finally:
        logger.removeHandler(handler)
    for text in (printed, stream.getvalue()):
        assert "explode(0)" in text and "return 1 / x" in text  # the user's, the remote's
        if TRIMS:
            assert PACKAGE not in text, text


def test_an_error_of_the_link_shows_no_frame_of_the_package(start_server) -> None:
    server = start_server("--classic")
    conn = server.connect()
    explode = conn.eval("lambda: __import__('os')._exit(3)")
    exc = _failure(explode)
    assert isinstance(exc, rk.ConnectionClosed)
    if TRIMS:
        assert _ours(exc) == []
    conn.close()

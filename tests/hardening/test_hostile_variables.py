"""A hostile peer's frame variables (``%xmode Verbose``): bounded in count and length, and a
malformed list refused like any malformed frame. A raw peer on a socket pair answers the
request with an exception it built itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from msgpack import ExtType

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.messages import Ext, Kind, Op
from remote_kernel.protocol.variables import MAX_ARGUMENTS, MAX_REPR, MAX_VARIABLES
from tests.hardening.rawpeer import RawPeer, packb

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, RawPeer]]:
    left, right = socket.socketpair()
    victim = Connection(SocketTransport(left, "hostile"), rk.VoidService, name="hostile")
    try:
        yield victim, RawPeer(right)
    finally:
        victim.close()
        right.close()


def _answer_with_frame_variables(victim: Connection, raw: RawPeer, variables: Any,
                                 arguments: Any = None) -> Any:
    result = victim.async_request(Op.PING, None)
    seq = raw.recv_kind((Kind.REQUEST,))[1]
    frame = ["/srv/device.py", 3, "read", "return a / b", "", "", 1, [], variables,
             "(a=1, b=0)" if arguments is None else arguments]
    raw.send([Kind.EXCEPTION, seq, ExtType(Ext.EXC, packb(
        ["builtins", "ValueError", ["bad"], "bad", "", [frame], "ValueError"]))])
    result.wait(5)
    return result.value


def test_many_long_variables_are_cut_to_the_bounds(pair) -> None:
    victim, raw = pair
    variables = [[f"name{i}", "x" * 1000] for i in range(60)]  # within the socket buffer
    with pytest.raises(ValueError) as caught:
        _answer_with_frame_variables(victim, raw, variables)
    (frame,) = caught.value.remote_frames
    assert len(frame.variables) == MAX_VARIABLES
    assert all(len(value) == MAX_REPR for _, value in frame.variables)
    assert frame.arguments == "(a=1, b=0)"


def test_long_arguments_are_cut_and_others_refused(pair) -> None:
    victim, raw = pair
    with pytest.raises(ValueError) as caught:
        _answer_with_frame_variables(victim, raw, [], "(" + "x" * 50_000 + ")")
    assert len(caught.value.remote_frames[0].arguments) == MAX_ARGUMENTS
    with pytest.raises(rk.ProtocolError, match="malformed exception frame"):
        _answer_with_frame_variables(victim, raw, [], ["(a=1)"])


def test_a_frame_of_some_fields_takes_the_defaults_of_the_others(pair) -> None:
    victim, raw = pair
    result = victim.async_request(Op.PING, None)
    seq = raw.recv_kind((Kind.REQUEST,))[1]
    frame = ["/srv/device.py", 3, "read", "return a / b", "side", "elsewhere"]  # 6 of 10
    raw.send([Kind.EXCEPTION, seq, ExtType(Ext.EXC, packb(
        ["builtins", "ValueError", ["bad"], "bad", "", [frame], "ValueError"]))])
    result.wait(5)
    with pytest.raises(ValueError) as caught:
        _ = result.value
    (got,) = caught.value.remote_frames
    assert (got.where, got.context_start, got.context, got.variables, got.arguments) == \
        ("elsewhere", 0, (), (), "")


@pytest.mark.parametrize("variables", [[["a"]], [["a", 1]], [[1, "a"]], "a = 1", [["a", "1", "2"]]],
                         ids=repr)
def test_malformed_variables_are_refused(pair, variables: Any) -> None:
    victim, raw = pair
    with pytest.raises(rk.ProtocolError, match="malformed exception frame"):
        _answer_with_frame_variables(victim, raw, variables)

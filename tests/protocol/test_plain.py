"""The "plain value" test (a value msgpack packs as it is, no boxing) has one definition,
``protocol.boxing.plain``; the hot loops inline it for speed (README "Developing": the
figures in issue 22). Every inlined copy is pinned here to the reference, value by value:
a request's arguments (where an int is left to box(), which keeps a plain one as it is),
a reply, a tuple's items, a batch's arguments and outcomes."""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.net.transports.sockets import SocketTransport
from remote_kernel.protocol.boxing import BatchCalls, BatchOutcomes, plain
from remote_kernel.protocol.messages import INT_MAX, INT_MIN, REPLY, REQUEST, Op

pytestmark = pytest.mark.timeout(120)


class Colour(enum.IntEnum):
    RED = 1


values = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=4),
    st.integers(min_value=INT_MIN - 4, max_value=INT_MIN + 4),
    st.integers(min_value=INT_MAX - 4, max_value=INT_MAX + 4),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=4), st.complex_numbers(allow_nan=False), st.just(Ellipsis),
    st.tuples(st.integers(-3, 3)), st.lists(st.integers(-3, 3), max_size=2),
    st.just(Colour.RED), st.builds(object),
)


def test_the_reference() -> None:
    assert all(plain(v) for v in ("", 1.5, True, None, 0, INT_MIN, INT_MAX))
    assert not any(plain(v) for v in (INT_MIN - 1, INT_MAX + 1, b"", (), Colour.RED, 1j))


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    left, right = socket.socketpair()
    conn = Connection(SocketTransport(left, "peer"), rk.VoidService, name="peer")
    right.setblocking(False)
    yield conn, right
    conn.close()
    right.close()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        pass


def _boxed_by_sending(pair: tuple[Connection, socket.socket], kind: int, value: Any) -> bool:
    """Whether sending ``value`` (a request's argument or a reply) called ``box`` on it."""
    conn, peer = pair
    boxer = conn._boxer
    seen: list[Any] = []
    box = type(boxer).box

    def spy(obj: Any) -> Any:
        seen.append(obj)
        return box(boxer, obj)

    boxer.box = spy  # type: ignore[method-assign]
    try:
        if kind == REQUEST:
            conn._send_message(REQUEST, 1, Op.PING, (value,))
        else:
            conn._send_message(REPLY, 1, value, None)
    finally:
        del boxer.box
        _drain(peer)
    return any(obj is value for obj in seen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_a_request_argument_is_boxed_unless_plain(pair: Any, value: Any) -> None:
    # The request loop leaves ints to box() (rare there; it returns a plain one unchanged,
    # so the bytes sent are the same): a plain int may be boxed, nothing else plain may.
    boxed = _boxed_by_sending(pair, REQUEST, value)
    if not plain(value):
        assert boxed
    elif type(value) is int:
        assert pair[0]._boxer.box(value) is value
    else:
        assert not boxed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_a_reply_is_boxed_unless_plain(pair: Any, value: Any) -> None:
    assert _boxed_by_sending(pair, REPLY, value) == (not plain(value))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_a_tuple_goes_as_it_is_when_its_items_are_plain(pair: Any, value: Any) -> None:
    boxer = pair[0]._boxer
    boxer.begin()
    try:
        items = (value, "name", 1)
        assert (boxer.box(items) is items) == plain(value)
        if plain(value):
            assert boxer.box(value) is value
    finally:
        boxer.rollback()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_a_batch_keeps_plain_arguments_and_outcomes_as_they_are(pair: Any, value: Any) -> None:
    boxer = pair[0]._boxer
    boxer.begin()
    try:
        args = (1, value)
        _targets, calls = boxer.box(BatchCalls([(object(), "f", args, None)]))
        assert (calls[0][2] is args) == plain(value)
        outcome = (1, value)
        boxed = boxer.box(BatchOutcomes([outcome]))
        assert (boxed[0] is outcome) == plain(value)
    finally:
        boxer.rollback()

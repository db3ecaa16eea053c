"""Exception groups from a hostile peer (protocol/exceptions.py, exception_groups.py): a group
of 100,000 sub-exceptions or nested 1,000 deep is refused after a bounded number of them
(never a crash, never memory in proportion to what was announced), a malformed member list
makes no group, a member may not carry a reference, and a real connection given such a reply
fails cleanly while the process goes on. A receiver that does not know groups (Python 3.10,
an older version) keeps the sub-exceptions as a plain attribute."""

from __future__ import annotations

import builtins
import time
import tracemalloc
from typing import Any

import pytest
from msgpack import ExtType

if "ExceptionGroup" not in vars(builtins):  # the module would not run: Python 3.10
    pytest.skip("exception groups are Python 3.11+", allow_module_level=True)

import remote_kernel as rk
from remote_kernel.core.connection import Connection
from remote_kernel.errors import RemoteError
from remote_kernel.protocol import exception_groups, exceptions
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.messages import Ext, Kind, Op
from remote_kernel.protocol.objects import ObjectTable
from tests.hardening.rawpeer import RawPeer, packb, peerref

pytestmark = pytest.mark.timeout(60)


def _boxer() -> Boxer:
    return Boxer(ObjectTable(), describe=lambda cls: ("m", cls.__name__, (), (), 0, ""),
                 make_proxy=lambda oid, descriptor: ("proxy", oid), proxy_oid=lambda o: None,
                 peer_name=lambda: "hostile")


def member(qualname: str = "ValueError", message: str = "x",
           attributes: dict | None = None) -> ExtType:
    """An EXC value as the wire format says (protocol/exceptions.py)."""
    return ExtType(Ext.EXC, packb(["builtins", qualname, [message], message, "", [], qualname,
                                   attributes or {}, [], None, None, False]))


def group(members: Any, message: str = "g", qualname: str = "ExceptionGroup") -> ExtType:
    count = len(members) if isinstance(members, list) else 0
    return member(qualname, f"{message} ({count} sub-exceptions)",
                  {"exceptions": members, "message": message})


def decode(value: ExtType) -> Any:
    return _boxer().decode(packb(value))


def test_a_group_built_by_hand_decodes_as_a_group() -> None:
    exc = decode(group([member(), member("KeyError", "k")]))
    assert isinstance(exc, ExceptionGroup) and isinstance(exc, RemoteError)
    assert exc.message == "g" and str(exc) == "g (2 sub-exceptions)"
    assert [type(m).__name__ for m in exc.exceptions] == ["ValueError", "KeyError"]


def test_a_group_of_100000_is_refused_after_the_bound() -> None:
    payload = packb(group([member()] * 100_000))
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(rk.ProtocolError, match=f"more than {exceptions.MAX_EXCEPTIONS}"):
            _boxer().decode(payload)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0
    assert peak < 8 << 20, peak  # what 512 exceptions cost, not 100,000


def test_a_group_nested_1000_deep_is_refused() -> None:
    value = member()
    for _ in range(1000):
        value = group([value])
    with pytest.raises(rk.ProtocolError, match="nested too deeply"):
        decode(value)


def test_a_deep_group_within_the_bound_arrives_whole() -> None:
    value = member()
    for _ in range(exceptions.MAX_CHAIN):
        value = group([value])
    exc, levels = decode(value), 0
    while isinstance(exc, ExceptionGroup):
        exc, levels = exc.exceptions[0], levels + 1
    assert levels == exceptions.MAX_CHAIN and type(exc).__name__ == "ValueError"


def test_a_wide_group_within_the_count_is_cut_per_group() -> None:
    exc = decode(group([member(message=str(n)) for n in range(300)]))
    assert [str(m) for m in exc.exceptions] == \
        [str(n) for n in range(exception_groups.MAX_GROUP)]


@pytest.mark.parametrize("members", ["text", [1, 2], [], [member(), 3], None,
                                     {"a": member()}])
def test_a_malformed_member_list_makes_no_group(members: Any) -> None:
    exc = decode(group(members))
    assert isinstance(exc, RemoteError) and not isinstance(exc, BaseExceptionGroup)
    assert type(exc).__name__ == "ExceptionGroup"
    assert exc.remote_type == "builtins.ExceptionGroup"


def test_a_member_may_not_carry_a_reference() -> None:
    with pytest.raises(rk.ProtocolError, match="references"):
        decode(group([member(attributes={"device": peerref(1)})]))


def test_members_of_a_class_that_is_no_group_stay_an_attribute() -> None:
    exc = decode(member("ValueError", "v", {"exceptions": [member()]}))
    assert type(exc).__name__ == "ValueError" and not isinstance(exc, BaseExceptionGroup)
    assert isinstance(exc.exceptions[0], ValueError)  # plain data of a ValueError, inert


def test_a_receiver_without_groups_keeps_the_members_as_an_attribute(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exception_groups, "GROUP", None)  # as Python 3.10 is
    exc = decode(group([member(), member("KeyError", "k")]))
    assert isinstance(exc, RemoteError) and not isinstance(exc, BaseExceptionGroup)
    assert exc.remote_type == "builtins.ExceptionGroup" and exc.message == "g"
    assert [type(m).__name__ for m in exc.exceptions] == ["ValueError", "KeyError"]


# -- a real connection --------------------------------------------------------------------



def _reply_with(victim: Connection, raw: RawPeer, error: ExtType) -> Any:
    result = victim.async_request(Op.PING, None)
    request = raw.recv_kind((Kind.REQUEST,))
    raw.send([Kind.EXCEPTION, request[1], error])
    return result


def test_a_group_reply_raises_the_group(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    result = _reply_with(victim, raw, group([member(), group([member("KeyError")], "inner")]))
    with pytest.raises(ExceptionGroup) as info:
        _ = result.value
    assert isinstance(info.value.exceptions[1].exceptions[0], KeyError)
    assert not victim.closed


def test_a_huge_group_reply_fails_cleanly(hostile: tuple[Connection, RawPeer]) -> None:
    victim, raw = hostile
    result = _reply_with(victim, raw, group([member()] * 100_000))
    with pytest.raises((rk.ProtocolError, rk.ConnectionClosed)):
        _ = result.value

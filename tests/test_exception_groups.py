"""An exception group raised on a real server arrives as an exception group (README.md, the
errors): its class, ``.message`` and ``.exceptions`` (each decoded as any remote exception
is, nested groups too), ``except*``, ``split``/``subgroup``, and the ``traceback`` printout
of a local group, the remote frames as notes. Bounded: a group of many or deeply nested
exceptions is cut by the sender."""

from __future__ import annotations

import builtins
import re
import traceback

import pytest

if "ExceptionGroup" not in vars(builtins):  # the module would not run: Python 3.10
    pytest.skip("exception groups are Python 3.11+", allow_module_level=True)

import remote_kernel as rk
from remote_kernel.errors import RemoteError
from remote_kernel.protocol import exception_groups, exceptions
from tests import error_services
from tests.error_services import BatchFailed, InstrumentFault
from tests.exception_group_catches import caught_by_except_star
from tests.test_remote_errors import functions, raised

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lab(classic: rk.Connection) -> object:
    return classic.modules["tests.error_services"]  # (tests/error_services.py, on the server)




def test_a_flat_group_arrives_as_an_exception_group(classic: rk.Connection, lab) -> None:
    exc = raised(lab.several)
    assert isinstance(exc, ExceptionGroup) and isinstance(exc, RemoteError)
    assert type(exc).__name__ == "ExceptionGroup"
    assert exc.remote_type == "builtins.ExceptionGroup" and exc.peer == classic.peer
    assert exc.message == "several" and str(exc) == "several (2 sub-exceptions)"
    assert functions(exc) == ["several"]
    value, key = exc.exceptions
    assert isinstance(value, ValueError) and isinstance(value, RemoteError)
    assert isinstance(key, KeyError) and isinstance(key, RemoteError)
    assert value.args == ("a",) and key.args == ("b",)
    assert value.peer == classic.peer and value.remote_type == "builtins.ValueError"
    assert exc.args == ("several", [value, key])  # as a local group's
    assert [str(member) for member in exc.exceptions] == ["a", "'b'"]


def test_except_star_catches_each_part(lab) -> None:
    caught = caught_by_except_star(lab.several)
    assert set(caught) == {"ValueError", "KeyError"}
    values, keys = caught["ValueError"], caught["KeyError"]
    assert [str(member) for member in values.exceptions] == ["a"]
    assert [member.args for member in keys.exceptions] == [("b",)]
    # The parts keep the remote class, peer and frames (derive), and say what they hold.
    assert isinstance(values, ExceptionGroup) and isinstance(values, RemoteError)
    assert functions(values) == ["several"] and values.remote_type == "builtins.ExceptionGroup"
    assert str(values) == "several (1 sub-exception)"
    printed = "".join(traceback.format_exception(values))
    assert "in several" in printed and "ValueError: a" in printed and "KeyError: " not in printed


def test_nested_groups_arrive_nested(lab) -> None:
    exc = raised(lab.nested_groups)
    value, inner = exc.exceptions
    assert isinstance(value, ValueError)
    assert isinstance(inner, ExceptionGroup) and isinstance(inner, RemoteError)
    assert inner.message == "inner"
    assert [type(member).__name__ for member in inner.exceptions] == ["KeyError", "TypeError"]
    match, rest = exc.split(TypeError)
    assert [member.message for member in match.exceptions] == ["inner"]
    assert isinstance(match.exceptions[0].exceptions[0], TypeError)
    assert [type(member).__name__ for member in rest.exceptions] == ["ValueError",
                                                                      "ExceptionGroup"]
    assert exc.subgroup(OSError) is None
    caught = caught_by_except_star(lab.nested_groups)
    assert isinstance(caught["KeyError"].exceptions[0].exceptions[0], KeyError)
    assert isinstance(caught["Exception"].exceptions[0].exceptions[0], TypeError)


def test_sub_exceptions_keep_their_chains_and_frames(lab) -> None:
    exc = raised(lab.group_with_causes)
    assert functions(exc) == ["group_with_causes"]
    for member, key in zip(exc.exceptions, ("x", "y"), strict=True):
        assert isinstance(member, RuntimeError) and isinstance(member, RemoteError)
        assert str(member) == "lookup failed"
        assert functions(member) == ["_failure", "lookup"]
        cause = member.__cause__
        assert isinstance(cause, KeyError) and cause.args == (key,)
        assert functions(cause) == ["lookup"]


def test_custom_group_and_member_classes_arrive_as_themselves(lab) -> None:
    exc = raised(lab.batch_failed)
    assert isinstance(exc, BatchFailed) and isinstance(exc, ExceptionGroup)
    assert isinstance(exc, RemoteError)
    assert exc.remote_type == "tests.error_services.BatchFailed"
    assert exc.batch == "morning" and exc.message == "batch of 2 failed"
    assert exc.__notes__[0] == "rerun the batch"
    instrument, value = exc.exceptions
    assert isinstance(instrument, InstrumentFault) and isinstance(value, ValueError)
    assert instrument.code == 7 and instrument.channel == 2
    match, rest = exc.split(InstrumentFault)
    assert match.exceptions == (instrument,) and rest.exceptions == (value,)


def test_a_base_exception_group_is_an_exception_here(lab) -> None:
    exc = raised(lab.base_group)  # `except Exception` catches it
    assert isinstance(exc, BaseExceptionGroup) and isinstance(exc, RemoteError)
    assert not isinstance(exc, ExceptionGroup)
    interrupt, value = exc.exceptions
    assert type(interrupt).__name__ == "KeyboardInterrupt"
    assert isinstance(interrupt, RemoteError) and not isinstance(interrupt, KeyboardInterrupt)
    caught = caught_by_except_star(lab.base_group)
    assert [type(m).__name__ for m in caught["Exception"].exceptions] == ["KeyboardInterrupt"]
    assert [str(m) for m in caught["ValueError"].exceptions] == ["v"]


def _boxes(text: str) -> list[str]:
    """The lines that draw a group's boxes and sub-exception lines, without the notes."""
    return [line.rstrip() for line in text.splitlines()
            if re.match(r"\s*\+[-+]", line) or re.match(r"\s*\| \w+(Error|Group): ", line)]


def test_the_printout_shows_the_sub_exceptions_as_for_a_local_group(lab) -> None:
    try:
        error_services.group_with_causes()
    except ExceptionGroup as local:
        local_text = "".join(traceback.format_exception(local))
    remote_text = "".join(traceback.format_exception(raised(lab.group_with_causes)))
    assert _boxes(remote_text) == _boxes(local_text)
    assert "+-+---------------- 1 ----------------" in remote_text
    assert "| RuntimeError: lookup failed" in remote_text
    assert "| KeyError: 'y'" in remote_text
    assert remote_text.count("    |   File ") >= 6  # each member's frames and its cause's
    assert 'raise _GROUP("lookups", [_failure("x"), _failure("y")])' in remote_text
    assert remote_text.count("The above exception was the direct cause") == 2


def test_a_wide_group_is_cut_by_the_sender_and_says_so(classic: rk.Connection, lab) -> None:
    exc = raised(lab.wide_group, 1000)
    assert str(exc) == "wide (1000 sub-exceptions)"
    assert [member.args for member in exc.exceptions] == \
        [(n,) for n in range(exception_groups.MAX_GROUP)]
    assert exc.__notes__[0] == \
        f"({1000 - exception_groups.MAX_GROUP} of its 1000 sub-exceptions were not sent)"
    assert classic.eval("6 * 7") == 42


def test_a_deep_group_is_cut_at_the_bound(classic: rk.Connection, lab) -> None:
    exc = raised(lab.deep_group, 1000)
    assert str(exc) == "level 999 (1 sub-exception)"
    levels = 0
    while isinstance(exc, ExceptionGroup):
        exc, levels = exc.exceptions[0], levels + 1
    assert levels == exceptions.MAX_CHAIN  # the last one sent had no room for its members
    assert type(exc).__name__ == "ExceptionGroup" and isinstance(exc, RemoteError)
    assert str(exc) == f"level {999 - levels} (1 sub-exception)"
    assert exc.__notes__[0] == "(1 of its 1 sub-exceptions were not sent)"
    assert classic.eval("6 * 7") == 42

"""Remote errors are as useful as local ones (README.md, "Python API", the errors): against
a real server process, the chain, the attributes, the original class, the frames and where
they ran, and the standard ``traceback`` printout; the decoder against a hostile peer; the
CLI's mistakes."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

import remote_kernel as rk
from remote_kernel import errors
from remote_kernel.errors import RemoteError
from remote_kernel.protocol import exceptions
from remote_kernel.protocol.boxing import Boxer
from remote_kernel.protocol.codec import pack
from remote_kernel.protocol.messages import Ext
from remote_kernel.protocol.objects import ObjectTable
from tests.conftest import ROOT, ServerProcess
from tests.error_services import InstrumentFault

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lab(classic: rk.Connection) -> Any:
    """The module tests/error_services.py, on the server."""
    return classic.modules["tests.error_services"]


def raised(call: Any, *args: Any) -> BaseException:
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at whatever came
        return exc
    raise AssertionError("nothing was raised")


def real(cause: BaseException | None) -> BaseException | None:
    """A cause from the peer (Python 3.10 adds a RemoteTraceback at the end of a chain)."""
    return None if isinstance(cause, errors.RemoteTraceback) else cause


def functions(exc: BaseException) -> list[str]:
    return [frame.function for frame in exc.remote_frames]


# -- chains ---------------------------------------------------------------------------------


def test_an_explicit_cause_arrives_with_its_own_frames(classic: rk.Connection, lab) -> None:
    exc = raised(lab.lookup, "missing")
    assert isinstance(exc, RuntimeError) and isinstance(exc, RemoteError)
    assert str(exc) == "lookup failed"
    cause = exc.__cause__
    assert isinstance(cause, KeyError) and isinstance(cause, RemoteError)
    assert cause.args == ("missing",)
    assert exc.__suppress_context__ is True
    assert exc.__context__ is cause  # raised inside the except block: the same exception
    assert functions(exc) == ["lookup"]
    assert functions(cause) == ["lookup"]
    assert exc.remote_frames[0].line == "raise RuntimeError(\"lookup failed\") from exc"
    assert cause.remote_frames[0].line == "return TABLE[key]"
    assert all(frame.where == classic.peer for frame in exc.remote_frames)


def test_an_implicit_context_arrives(lab) -> None:
    exc = raised(lab.lookup_implicitly, "missing")
    assert isinstance(exc, ValueError)
    assert exc.__cause__ is None and exc.__suppress_context__ is False
    assert isinstance(exc.__context__, KeyError)
    assert functions(exc.__context__) == ["lookup_implicitly"]
    text = exc.remote_traceback
    assert "During handling of the above exception, another exception occurred" in text
    assert text.index("KeyError") < text.index("ValueError: no entry")


def test_from_none_keeps_the_context_but_hides_it(lab) -> None:
    exc = raised(lab.lookup_from_none, "missing")
    assert isinstance(exc, LookupError)
    assert real(exc.__cause__) is None and exc.__suppress_context__ is True
    assert isinstance(exc.__context__, KeyError)
    assert "KeyError" not in exc.remote_traceback
    assert "KeyError" not in "".join(traceback.format_exception(exc))


def test_a_long_chain_is_cut_at_the_bound(lab) -> None:
    exc = raised(lab.chain_of, 30)
    depth, linked = 0, exc
    while real(linked.__cause__) is not None:
        depth, linked = depth + 1, linked.__cause__
    assert depth == exceptions.MAX_CHAIN
    assert str(exc) == "level 30"


# -- attributes, notes, classes -----------------------------------------------------------


def test_oserror_attributes_arrive(lab, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-file.txt")
    exc = raised(lab.open_missing, missing)
    assert isinstance(exc, FileNotFoundError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENOENT
    assert exc.filename == missing
    assert exc.strerror == os.strerror(errno.ENOENT)
    assert exc.remote_type == "builtins.FileNotFoundError"
    assert str(exc) == f"[Errno 2] No such file or directory: {missing!r}"


def test_syntax_error_attributes_arrive(classic: rk.Connection) -> None:
    exc = raised(classic.execute, "x = (1 +\n")
    assert isinstance(exc, SyntaxError)
    try:
        compile("x = (1 +\n", "here", "exec")
    except SyntaxError as local:
        expected = local
    assert (exc.lineno, exc.offset, exc.text, exc.msg, exc.end_lineno, exc.end_offset) == (
        expected.lineno, expected.offset, expected.text, expected.msg, expected.end_lineno,
        expected.end_offset)
    assert exc.filename.startswith("<remote-execute-")
    printed = "".join(traceback.format_exception_only(type(exc), exc))
    assert "x = (1 +" in printed and "^" in printed and exc.filename in printed


def test_custom_attributes_by_value_and_the_original_class(lab) -> None:
    try:
        lab.fault(42)
    except InstrumentFault as exc:  # this side imports tests.error_services: the same class
        assert isinstance(exc, RemoteError)
        assert type(exc).__name__ == "InstrumentFault"
        assert exc.remote_type == "tests.error_services.InstrumentFault"
        assert exc.code == 42 and exc.channel == 3
        assert not hasattr(exc, "handle")  # a lock cannot be copied: left out, no netref
        assert not hasattr(exc, "_private")
        assert exc.args == ("the instrument reported a fault",)
        assert exc.__notes__[0] == "check the cable"
    else:
        raise AssertionError("InstrumentFault was not raised")


def test_except_json_decode_error_catches_a_remote_one(lab) -> None:
    before = set(sys.modules)
    with pytest.raises(json.JSONDecodeError) as info:
        lab.parse("{")
    exc = info.value
    assert exc.pos == 1 and exc.doc == "{" and exc.lineno == 1
    assert exc.remote_type == "json.decoder.JSONDecodeError"
    assert set(sys.modules) - before == set()  # nothing imported because the peer named it


def test_a_class_this_side_does_not_have_is_never_imported(lab) -> None:
    assert "tests.remote_only_errors" not in sys.modules
    with pytest.raises(ValueError) as info:  # its nearest builtin base
        lab.remote_only()
    exc = info.value
    assert "tests.remote_only_errors" not in sys.modules
    assert type(exc).__name__ == "SensorFault" and isinstance(exc, RemoteError)
    assert exc.remote_type == "tests.remote_only_errors.SensorFault"
    assert str(exc) == "sensor 3 is unplugged"


def test_remote_type_is_module_and_qualname(lab) -> None:
    assert raised(lab.inner).remote_type == "builtins.ValueError"


@pytest.mark.parametrize("name", ["interrupt_here", "exit_here"])
def test_a_peers_keyboard_interrupt_or_exit_is_an_exception_here(lab, name: str) -> None:
    exc = raised(getattr(lab, name))  # `except Exception` catches it
    assert isinstance(exc, RemoteError)
    assert not isinstance(exc, (KeyboardInterrupt, SystemExit))
    assert type(exc).__name__ == {"interrupt_here": "KeyboardInterrupt",
                                  "exit_here": "SystemExit"}[name]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is 3.11+")
def test_a_class_that_needs_arguments_to_exist_still_arrives(lab) -> None:
    exc = raised(lab.several)  # ExceptionGroup cannot be made without arguments: it gets
    assert isinstance(exc, RemoteError) and type(exc).__name__ == "ExceptionGroup"
    assert exc.remote_type == "builtins.ExceptionGroup"  # its own (tests/test_exception_groups.py)
    assert [type(member).__name__ for member in exc.exceptions] == ["ValueError", "KeyError"]


# -- frames, sides, printouts ------------------------------------------------------------


def test_a_two_level_callback_chain_reads_outermost_first(classic: rk.Connection, lab) -> None:
    def on_the_client(server_inner: Any) -> Any:
        return server_inner()

    exc = raised(lab.outer, on_the_client)
    assert isinstance(exc, ValueError) and str(exc) == "deep down"
    assert functions(exc) == ["outer", "on_the_client", "inner"]
    assert [frame.where for frame in exc.remote_frames] == [classic.peer, "", classic.peer]
    text = exc.remote_traceback
    assert text.index("in outer") < text.index("in on_the_client") < text.index("in inner")
    assert text.count(f"[on {classic.peer}]") == 2 and text.count("[here]") == 1


def test_format_exc_and_logging_show_the_remote_frames(lab) -> None:
    stream = io.StringIO()
    logger = logging.getLogger("tests.remote_errors")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        try:
            lab.lookup("missing")
        except RuntimeError:
            text = traceback.format_exc()
            logger.exception("the lookup failed")
    finally:
        logger.removeHandler(handler)
    for printed in (text, stream.getvalue()):
        assert printed.count("in lookup") == 2  # the cause's frame and the error's
        assert "raise RuntimeError(\"lookup failed\") from exc" in printed
        assert "The above exception was the direct cause of the following exception" in printed
        assert printed.index("KeyError") < printed.index("RuntimeError: lookup failed")


@pytest.mark.slow
def test_pytests_report_shows_the_remote_frames(classic_server: ServerProcess,
                                                tmp_path: Path) -> None:
    test_file = tmp_path / "test_remote_failure.py"
    test_file.write_text(textwrap.dedent(f"""
        import remote_kernel as rk

        def test_it():
            with rk.connect("127.0.0.1", {classic_server.port},
                            token={classic_server.token!r}) as conn:
                conn.modules["tests.error_services"].lookup("missing")
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(test_file)], capture_output=True, text=True, timeout=60,
                            cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "in lookup" in result.stdout, result.stdout
    assert "raise RuntimeError(\"lookup failed\") from exc" in result.stdout
    if sys.version_info >= (3, 11):  # and no frame of the package (core/netref.py "Tracebacks")
        assert "remote_kernel/core" not in result.stdout, result.stdout


def test_python_310_hangs_the_frames_on_the_innermost_cause(
        lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "HAS_NOTES", False)  # as on 3.10: no notes are printed
    exc = raised(lab.lookup, "missing")
    assert not any("Remote traceback" in note for note in exc.__notes__)
    cause = exc.__cause__
    assert isinstance(cause, KeyError)  # the real chain is kept...
    assert isinstance(cause.__cause__, errors.RemoteTraceback)  # ...and carries the frames
    printed = "".join(traceback.format_exception(exc))
    assert "raise RuntimeError(\"lookup failed\") from exc" in printed


def test_the_demos_frames_show(start_server) -> None:
    server = start_server("--service", "remote_kernel.demo.bench:Lab", name="bench")
    with server.connect() as conn:
        exc = raised(lambda: conn.root.generator.configure(frequency=5e9))
    assert type(exc).__name__ == "OutOfRange"
    assert functions(exc) == ["configure", "frequency"]
    assert exc.remote_frames[0].filename.endswith(os.path.join("demo", "bench.py"))
    assert "configure" in "\n".join(exc._render_traceback_())


@pytest.mark.serial
def test_stop_while_waiting_is_a_local_keyboard_interrupt_of_one_line(
        classic: rk.Connection) -> None:
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:  # a real one: Ctrl-C stays Ctrl-C
        classic.modules.time.sleep(30)
    assert time.monotonic() - started < 0.5 + 2.0
    assert not isinstance(info.value, RemoteError)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in info.value._render_traceback_()]
    assert lines == [f"KeyboardInterrupt: the call to {classic.peer} was interrupted; "
                     f"the connection stays usable"]
    assert classic.eval("6 * 7") == 42


def test_a_timeout_names_no_opcode(classic: rk.Connection) -> None:
    with pytest.raises(rk.RequestTimeout) as info:
        classic.sync_request(rk_op("CALLATTR"), classic.modules.time, "sleep", (2,), None,
                             timeout=0.2)
    assert str(info.value) == f"no reply from {classic.peer} within 0.2 s"
    assert len(info.value._render_traceback_()) == 1


def rk_op(name: str) -> int:
    from remote_kernel.protocol.messages import Op

    return int(Op[name])


# -- a hostile peer -------------------------------------------------------------------------


@pytest.fixture
def boxer() -> Boxer:
    return Boxer(ObjectTable(), describe=lambda cls: ("m", "q", (), (), 0, ""),
                 make_proxy=lambda oid, descriptor: object(), proxy_oid=lambda obj: None,
                 peer_name=lambda: "hostile:1")


def exc_value(*items: Any) -> msgpack.ExtType:
    return msgpack.ExtType(Ext.EXC, msgpack.packb(list(items), use_bin_type=True))


def full(module: str = "builtins", qualname: str = "ValueError", args: Any = ("x",),
         message: Any = "x", frames: Any = (), base: str = "ValueError", attributes: Any = None,
         notes: Any = None, cause: Any = None, context: Any = None,
         suppress: Any = False) -> msgpack.ExtType:
    return exc_value(module, qualname, list(args), message, "", list(frames), base,
                     attributes, notes, cause, context, suppress)


@pytest.mark.parametrize("value", [
    exc_value(1, "ValueError", [], "x", "", [], ""),
    exc_value("builtins", "ValueError", [], "x", "", [["f", "one", "fn", ""]], "ValueError"),
    exc_value("builtins", "ValueError", [], "x", "", "not frames", "ValueError"),
    full(attributes=["not", "a", "map"]),
    full(notes=[1, 2]),
    full(cause="not an exception"),
    full(suppress="yes"),
    full(args=[msgpack.ExtType(Ext.REF, b"\0" * 12)]),
    full(attributes={"device": msgpack.ExtType(Ext.PEERREF, b"\0" * 8)}),
    exc_value("builtins"),
])
def test_malformed_exceptions_are_protocol_errors(boxer: Boxer, value: Any) -> None:
    with pytest.raises(rk.ProtocolError):
        boxer.decode(msgpack.packb(value, use_bin_type=True))


def test_a_chain_deeper_than_the_bound_is_refused(boxer: Boxer) -> None:
    value = full()
    for _ in range(exceptions.MAX_CHAIN + 2):
        value = full(cause=value)
    with pytest.raises(rk.ProtocolError):
        boxer.decode(msgpack.packb(value, use_bin_type=True))


def test_counts_and_lengths_are_bounded_and_the_message_is_text(boxer: Boxer) -> None:
    frames = [["f.py", n, "fn", "line"] for n in range(500)]
    attributes = {f"a{n}": n for n in range(200)}
    exc = boxer.decode(msgpack.packb(full(
        message=["not", "text"], frames=frames, attributes=attributes,
        notes=["n" * (exceptions.MAX_TEXT * 2)] * 100), use_bin_type=True))
    assert str(exc) == "('not', 'text')"
    assert len(exc.remote_frames) == exceptions.MAX_FRAMES
    assert exc.remote_frames[-1].lineno == 499  # the innermost are kept
    assert len([name for name in vars(exc) if name.startswith("a")]) == \
        exceptions.MAX_ATTRIBUTES
    notes = exc.__dict__["_rk_remote_notes"]
    assert len(notes) == exceptions.MAX_NOTES and len(notes[0]) == exceptions.MAX_TEXT


def test_attributes_never_replace_what_the_class_defines(boxer: Boxer) -> None:
    exc = boxer.decode(msgpack.packb(full(attributes={
        "remote_type": "x", "args": ("y",), "__class__": 1, "with_traceback": 2,
        "_rk_message": "forged", "not an identifier": 3, "peer": "me", "code": 7}),
        use_bin_type=True))
    assert exc.remote_type == "builtins.ValueError" and exc.peer == "hostile:1"
    assert exc.args == ("x",) and str(exc) == "x" and type(exc).__name__ == "ValueError"
    assert exc.code == 7 and callable(exc.with_traceback)
    exc = boxer.decode(msgpack.packb(full(module="tests.error_services",
                                          qualname="InstrumentFault", base="Exception",
                                          attributes={"channel": 5, "__init__": 1}),
                                     use_bin_type=True))
    assert isinstance(exc, InstrumentFault) and exc.channel == 5  # a default: replaced
    assert "__init__" not in vars(exc)
    exc = boxer.decode(msgpack.packb(full(module=__name__, qualname="_WithProperty",
                                          base="Exception", attributes={"level": 1}),
                                     use_bin_type=True))
    assert isinstance(exc, _WithProperty) and "level" not in vars(exc)  # no setter ran


class _WithProperty(Exception):
    @property
    def level(self) -> int:
        return 0

    @level.setter
    def level(self, value: int) -> None:
        raise AssertionError("the peer made this run")


class _Registers(Exception):
    """A local class whose subclasses would run code: never adopted."""

    made: list[type] = []  # noqa: RUF012

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _Registers.made.append(cls)


class _Meta(type):
    pass


class _WithMeta(Exception, metaclass=_Meta):
    pass


class _WithNew(Exception):
    def __new__(cls, *args: Any) -> Any:
        raise AssertionError("the peer made this run")


@pytest.mark.parametrize("cls", [_Registers, _WithMeta, _WithNew])
def test_local_classes_that_would_run_code_are_not_adopted(boxer: Boxer, cls: type) -> None:
    exc = boxer.decode(msgpack.packb(full(module=__name__, qualname=cls.__qualname__,
                                          base="Exception"), use_bin_type=True))
    assert not isinstance(exc, cls) and isinstance(exc, RemoteError)
    assert type(exc).__name__ == cls.__name__
    assert _Registers.made == []


def test_local_classes_are_cached_per_connection_and_bounded(boxer: Boxer) -> None:
    other = Boxer(ObjectTable(), describe=lambda cls: ("m", "q", (), (), 0, ""),
                  make_proxy=lambda oid, descriptor: object(), proxy_oid=lambda obj: None,
                  peer_name=lambda: "other:1")
    first = boxer.decode(msgpack.packb(full(qualname="ValueError"), use_bin_type=True))
    again = boxer.decode(msgpack.packb(full(qualname="ValueError"), use_bin_type=True))
    elsewhere = other.decode(msgpack.packb(full(qualname="ValueError"), use_bin_type=True))
    assert type(first) is type(again) and type(first) is not type(elsewhere)
    for n in range(exceptions.MAX_CLASSES + 50):
        boxer.decode(msgpack.packb(full(module="peer.named", qualname=f"E{n}"),
                                   use_bin_type=True))
    assert len(boxer.exception_classes) == exceptions.MAX_CLASSES
    assert "peer.named" not in sys.modules


def test_an_exception_is_sent_without_references(boxer: Boxer) -> None:
    class Holder(Exception):
        pass

    exc = Holder(object())
    exc.device = object()
    exc.table = {"a": [1, 2]}
    exc.blob = b"x" * (exceptions.MAX_VALUE + 1)
    decoded = boxer.decode(pack(boxer.box_exception(exc)))
    assert decoded.args == (str(exc),)  # args that cannot be copied: the message
    assert decoded.table == {"a": [1, 2]}
    assert not hasattr(decoded, "device") and not hasattr(decoded, "blob")
    assert boxer.table.__len__() == 0 and boxer.outgoing == []


# -- mistakes on the command line ---------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remote_kernel", *args], capture_output=True,
                          text=True, timeout=60, cwd=str(ROOT),
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize(("args", "expected"), [
    (("serve", "--port", "99999"), "99999 is not a port number (0 to 65535"),
    (("serve", "--port", "-5"), "-5 is not a port number"),
    (("serve", "--service", "nosuchmod:Lab"), "no module named 'nosuchmod'"),
    (("serve", "--service", "json:Nope"), "module 'json' has no attribute 'Nope'"),
    (("serve", "--service", "json"), "--service must look like 'package.module:ClassName'"),
    (("serve", "--classic", "--token-file", "/no/such/token"),
     "--token-file: cannot read the token file /no/such/token"),
    (("serve", "--bogus"), "unrecognized arguments: --bogus"),
])
def test_a_cli_mistake_is_one_line_and_an_exit_code(args: tuple[str, ...],
                                                    expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and "remote_kernel/" not in result.stderr


@pytest.fixture
def broken_service(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "broken_service_mod.py").write_text("import os\nx = undefined_name\n")
    yield tmp_path


def test_a_service_module_that_fails_says_where_in_one_line(broken_service: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "serve", "--service", "broken_service_mod:X"],
        capture_output=True, text=True, timeout=60, cwd=str(broken_service),
        env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{broken_service}"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "NameError: name 'undefined_name' is not defined" in result.stderr
    assert "broken_service_mod.py, line 2" in result.stderr

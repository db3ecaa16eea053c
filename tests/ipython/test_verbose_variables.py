"""``%xmode Verbose`` lists the variables of each remote frame's line, as it does for a local
frame: a real IPython shell against a real classic server process. Asked only while the mode
is Verbose, bounded, and never from a service that is not classic."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk

pytestmark = pytest.mark.timeout(60)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DIVIDE = ("def divide(a, b):\n"
          "    c = a + 1\n"
          "    secret_word = 'swordfish'\n"
          "    return c / b\n")


def run(shell: InteractiveShell, capsys: pytest.CaptureFixture, code: str) -> str:
    capsys.readouterr()
    shell.run_cell(code)
    captured = capsys.readouterr()
    return ANSI.sub("", captured.out + captured.err)


@pytest.fixture
def dev(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    shell.run_line_magic("remote", f"connect {classic_server.file} --name dev")
    conn = shell.user_ns["dev"]
    conn.execute(DIVIDE)
    yield conn
    shell.run_line_magic("xmode", "Context")


def test_verbose_shows_the_variables_of_each_remote_line(shell, dev, capsys) -> None:
    text = run(shell, capsys, "dev.namespace['divide'](3, 0)")
    assert "c = 4" not in text  # Context mode: no variables asked for, none shown
    assert dev.variables_requested is False
    run(shell, capsys, "%xmode Verbose")
    text = run(shell, capsys, "dev.namespace['divide'](3, 0)")
    assert dev.variables_requested is True
    lines = [line.strip() for line in text.splitlines()]
    at = lines.index("----> 4     return c / b") if "----> 4     return c / b" in lines else \
        next(i for i, line in enumerate(lines) if line.endswith("return c / b"))
    assert lines[at + 1:at + 3] == ["c = 4", "b = 0"], text
    assert any(line.endswith("in divide(a=3, b=0)") for line in lines), text  # the call
    assert not any(line.startswith("secret_word =") for line in lines)  # the line's names only
    assert "ZeroDivisionError: division by zero" in text
    # Back to Context: the peer is told, and sends none again.
    run(shell, capsys, "%xmode Context")
    text = run(shell, capsys, "dev.namespace['divide'](3, 0)")
    assert dev.variables_requested is False and "c = 4" not in text


def test_a_remote_cell_in_verbose_mode(shell, dev, capsys) -> None:
    run(shell, capsys, "%xmode Verbose")
    text = run(shell, capsys, "%%remote dev\nitems = list(range(1000))\nlimit = 'x' * 5000\n"
                              "items[limit]")
    lines = [line.strip() for line in text.splitlines()]
    items = next(line for line in lines if line.startswith("items = "))
    limit = next(line for line in lines if line.startswith("limit = "))
    assert items.startswith("items = [0, 1, 2") and len(items) < 300  # bounded reprs
    assert limit.startswith("limit = 'xxx") and len(limit) < 300
    assert "TypeError: list indices must be integers or slices, not str" in text


def test_a_broken_repr_says_so_and_the_error_is_intact(shell, dev, capsys) -> None:
    dev.execute("class Broken:\n    def __repr__(self):\n        raise RuntimeError('no')\n"
                "def fail(thing):\n    return thing.missing\n")
    run(shell, capsys, "%xmode Verbose")
    text = run(shell, capsys, "dev.namespace['fail'](dev.namespace['Broken']())")
    assert re.search(r"thing = <Broken instance at 0x[0-9a-f]+>", text), text  # as reprlib
    assert "AttributeError" in text and "missing" in text


class Restricted(rk.Service):
    def exposed_divide(self, a: int, b: int) -> float:
        token = "kept-on-the-server"  # noqa: F841 - a local the client must not see
        return a / b


def test_a_service_that_is_not_classic_sends_no_variables() -> None:
    with rk.Server(Restricted) as server, \
            rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        conn.request_variables(True)
        with pytest.raises(ZeroDivisionError) as caught:
            conn.root.divide(1, 0)
        assert caught.value.remote_frames
        assert all(frame.variables == () for frame in caught.value.remote_frames)


def test_a_classic_peer_sends_them_only_when_asked() -> None:
    with rk.Server(rk.ClassicService) as server, \
            rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        conn.execute(DIVIDE)
        with pytest.raises(ZeroDivisionError) as caught:
            conn.namespace["divide"](3, 0)
        assert all(frame.variables == () for frame in caught.value.remote_frames)
        conn.request_variables(True)
        with pytest.raises(ZeroDivisionError) as caught:
            conn.namespace["divide"](3, 0)
        frame = caught.value.remote_frames[-1]
        assert frame.function == "divide" and frame.variables == (("c", "4"), ("b", "0"))
        assert frame.arguments == "(a=3, b=0)"


def test_a_netref_among_the_variables_is_named_not_asked_for_its_repr() -> None:
    asked: list[str] = []

    class Thing:
        def __repr__(self) -> str:
            asked.append("repr")
            return "Thing()"

    with rk.Server(rk.ClassicService) as server, \
            rk.connect("127.0.0.1", server.port, timeout=5) as conn:
        conn.execute("def use(thing, b):\n    return [thing, [thing]] and 1 / b\n")
        conn.request_variables(True)
        with pytest.raises(ZeroDivisionError) as caught:
            conn.namespace["use"](Thing(), 0)
        frame = caught.value.remote_frames[-1]
        assert frame.variables == (("thing", "<netref>"), ("b", "0"))
        assert frame.arguments == "(thing=<netref>, b=0)"
        assert asked == []  # the peer sent no request while it built its error

"""input() in a remote cell, at the protocol level: a real server process, cells run by a
script with its own sink. Where the sink answers ``input`` the cell asks it; anywhere else
(``conn.execute``, other threads, a sink without ``input``) input() reads the server's own
stdin, as it always did."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import remote_kernel as rk
from remote_kernel.core.connection import Connection

pytestmark = pytest.mark.timeout(60)
FAKE_STDIN = "import io, sys\nsys.stdin = io.StringIO('one\\ntwo\\nthree\\n')"


class Sink:
    """A script's sink: records streams, nothing else."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def stream(self, name: str, text: str) -> None:
        self.text.append(text)

    def display(self, data: Any, metadata: Any, *args: Any) -> None:
        pass

    def result(self, data: Any, metadata: Any, count: int) -> None:
        pass

    def clear_output(self, wait: bool = False) -> None:
        pass


class AskingSink(Sink):
    """A sink that answers input() as a notebook does, recording each question."""

    def __init__(self, answer: str = "typed", error: BaseException | None = None) -> None:
        super().__init__()
        self.asked: list[tuple[str, bool]] = []
        self.answer = answer
        self.error = error

    def input(self, prompt: str, password: bool = False) -> str:
        self.asked.append((prompt, password))
        if self.error is not None:
            raise self.error
        return self.answer


def _classic(server: Any) -> Connection:
    return server.connect(service=rk.ClassicService)  # the sinks' methods are public


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import ServerProcess

    process = ServerProcess(tmp_path_factory.mktemp("input"), "--classic", name="input")
    yield process
    process.stop()


def test_the_cell_asks_its_sink_and_scripts_read_the_servers_stdin(server: Any) -> None:
    conn = _classic(server)
    try:
        conn.execute(FAKE_STDIN)
        assert conn.eval("input()") == "one"  # no cell: the server's stdin
        interpreter = conn.root.interpreter
        sink = AskingSink()
        interpreter.run_cell("import getpass\nprint('first')\nname = input('Name? ')\n"
                             "secret = getpass.getpass()", sink)
        assert sink.text == ["first\n"]  # flushed before the question
        assert sink.asked == [("Name? ", False), ("Password: ", True)]
        assert conn.eval("(name, secret)") == ("typed", "typed")
        interpreter.run_cell("plain = input()", Sink())  # a sink without input()
        assert conn.eval("plain") == "two"
        # Only the thread running the cell asks the sink; another one reads stdin.
        interpreter.run_cell("import threading\ngot = {}\n"
                             "worker = threading.Thread(target=lambda: got.update(t=input()))\n"
                             "worker.start(); worker.join()\ngot['cell'] = input()", sink)
        assert conn.eval("got") == {"t": "three", "cell": "typed"}
        assert conn.eval("(input.__module__, __import__('getpass').getpass.__module__)") == \
            ("builtins", "getpass")  # put back once no cell runs
    finally:
        conn.close()


def test_refusals_are_the_remote_sides_own_exceptions(server: Any) -> None:
    from IPython.core.error import StdinNotImplementedError

    conn = _classic(server)
    try:
        interpreter = conn.root.interpreter
        catch = ("try:\n    input('? ')\nexcept BaseException as exc:\n"
                 "    caught = (type(exc).__module__, type(exc).__name__, str(exc))\n")
        cases = [(StdinNotImplementedError("no stdin here"),
                  ("IPython.core.error", "StdinNotImplementedError", "no stdin here")),
                 (EOFError(), ("builtins", "EOFError", "")),
                 (KeyboardInterrupt("Interrupted by user"),
                  ("builtins", "KeyboardInterrupt", "Interrupted by user")),
                 (ValueError("other"), ("builtins", "ValueError", "other"))]
        for error, expected in cases:
            interpreter.run_cell(catch, AskingSink(error=error))
            caught = conn.eval("caught")
            if expected[1] == "ValueError":  # any other error stays the notebook side's
                assert caught[1] == "ValueError" and caught[2] == "other"
            else:
                assert caught == expected
    finally:
        conn.close()


def test_without_ipython_on_the_server_the_error_keeps_its_name(start_server) -> None:
    from IPython.core.error import StdinNotImplementedError

    plain = start_server("--classic", name="plain", block=("IPython",))
    conn = _classic(plain)
    try:
        conn.root.interpreter.run_cell(
            "try:\n    input()\nexcept NotImplementedError as exc:\n"
            "    caught = (type(exc).__name__, str(exc))\n",
            AskingSink(error=StdinNotImplementedError("no stdin here")))
        assert conn.eval("caught") == ("StdinNotImplementedError", "no stdin here")
    finally:
        conn.close()

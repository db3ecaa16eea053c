"""input() in a %%remote cell of a plain IPython shell (a terminal's): the shell's own input()
and getpass() answer it, and the remote cell gets the answer."""

from __future__ import annotations

import builtins
import getpass
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import remote_kernel as rk
from remote_kernel.ipython.registry import get_registry

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    shell.run_line_magic("remote", f"connect 127.0.0.1:{classic_server.port} --name stdin_lab "
                                   f"--token-file {classic_server.token_file}")
    yield shell.user_ns["stdin_lab"]
    if "stdin_lab" in get_registry().entries:
        shell.run_line_magic("remote", "close stdin_lab")


def test_the_shells_input_and_getpass_answer(shell: InteractiveShell, lab: rk.Connection,
                                            classic_server,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []

    def typed(prompt: str = "") -> str:
        asked.append(("input", prompt))
        return "ada"

    def secret(prompt: str = "Password: ", stream: object = None) -> str:
        asked.append(("getpass", prompt))
        return "hunter2"

    monkeypatch.setattr(builtins, "input", typed)
    monkeypatch.setattr(getpass, "getpass", secret)
    result = shell.run_cell("%%remote\nimport getpass, os\n"
                            "answers = (input('Name? '), getpass.getpass(), os.getpid())")
    assert result.error_in_exec is None, result.error_in_exec
    assert asked == [("input", "Name? "), ("getpass", "Password: ")]
    name, password, pid = lab.eval("answers")
    assert (name, password) == ("ada", "hunter2") and pid == classic_server.pid

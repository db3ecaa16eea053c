"""Terminal IPython under a pseudo-terminal: a remote callback fired while the prompt waits
prints without a key press; ``%unload_ext`` removes the prompt's hook."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")]

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")


class Terminal:
    """``ipython`` on a pty; keys in, screen text out (escape sequences stripped)."""

    def __init__(self, tmp: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1",
                   IPYTHONDIR=str(tmp / "ipython"), COLUMNS="200", LINES="50")
        env.pop("IPY_TEST_SIMPLE_PROMPT", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become IPython
            os.execvpe(sys.executable, [sys.executable, "-m", "IPython", "--no-banner",
                                        "--colors=nocolor", "--no-confirm-exit",
                                        "--HistoryManager.enabled=False"], env)
        self.screen = ""

    def read(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            self.screen += ANSI.sub("", data.decode("utf-8", "replace"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.screen)
            if found:
                return found.group(0)
            self.read(0.1)
        raise TimeoutError(f"{pattern!r} did not appear; the screen ends with:\n"
                           f"{self.screen[-2000:]}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def run(self, line: str, prompt: int, timeout: float = 30.0) -> None:
        """Type a line and wait for the next prompt."""
        self.type(line)
        self.wait_for(rf"In \[{prompt}\]", timeout)

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    yield term
    term.close()


@pytest.mark.slow
def test_a_callback_prints_while_the_prompt_waits(terminal: Terminal, classic_server) -> None:
    terminal.wait_for(r"In \[1\]")
    terminal.run("%load_ext remote_kernel", 2)
    terminal.run(f"%remote connect {classic_server.file} --name lab", 3)
    terminal.run("lab.execute('import threading\\ndef later(cb, s):\\n"
                 "    threading.Timer(s, cb, args=(\"ping\",)).start()')", 4)
    terminal.run("lab.namespace['later'](lambda what: print('callback says', what), 2.0)", 5)
    started = time.monotonic()
    terminal.wait_for(r"callback says ping", 15)  # no key pressed meanwhile
    assert time.monotonic() - started < 10
    terminal.run("get_ipython().active_eventloop", 6)
    assert "'remote_kernel'" in terminal.screen
    terminal.run("%unload_ext remote_kernel", 7)
    terminal.run("print('hook:', get_ipython().active_eventloop)", 8)
    terminal.wait_for(r"hook: None")

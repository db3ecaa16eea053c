"""input() and getpass() in the proxy kernel's cells (they run on the remote): the front end's
prompt box, answered through jupyter_client's stdin channel, as in a local ipykernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from remote_kernel.kernel import kernelspec
from tests.ipython.kernel_client import Kernel
from tests.ipython.stdin_driver import STOP, run_answering

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # each starts a kernel
SPEC = "rk-test-proxy-stdin"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    result = subprocess.run(  # no --trust: what the remote writes is sanitized
        [sys.executable, "-m", "remote_kernel", "kernel", "install", "--name", SPEC,
         "--target", str(classic_server.file), "--user"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kernel = Kernel(SPEC)
    yield kernel
    kernel.close()
    kernelspec.remove(SPEC)


def test_input_and_getpass_ask_the_front_end(kernel: Kernel, classic_server) -> None:
    run = run_answering(kernel, "import getpass, os\nprint('before')\n"
                                "name = input('Name? ')\nsecret = getpass.getpass()\n"
                                "print(name.upper(), len(secret), os.getpid())",
                        ["ada", "hunter2"])
    assert run.status == "ok", run.reply
    assert run.requests == [{"prompt": "Name? ", "password": False},
                            {"prompt": "Password: ", "password": True}]
    assert run.run.text() == f"before\nADA 7 {classic_server.pid}\n"
    assert classic_server.pid != os.getpid()


def test_the_remote_prompt_is_sanitized_when_untrusted(kernel: Kernel) -> None:
    run = run_answering(kernel, "input('\\x1b[2J\\x1b]0;owned\\x07Name? ')", ["x"])
    assert run.status == "ok", run.reply
    assert run.requests[0]["prompt"].endswith("Name? ")
    assert "\x1b" not in run.requests[0]["prompt"]


def test_without_stdin_the_error_is_ipykernels(kernel: Kernel) -> None:
    run = run_answering(kernel, "input('Name? ')", [], allow_stdin=False)
    assert run.status == "error" and run.requests == []
    assert run.reply["ename"] == "StdinNotImplementedError"
    assert run.reply["evalue"] == ("raw_input was called, but this frontend does not support "
                                   "input requests.")
    run = run_answering(kernel, "import getpass\ntry:\n    getpass.getpass()\n"
                                "except NotImplementedError as exc:\n    print(type(exc), exc)",
                        [], allow_stdin=False)
    assert run.status == "ok", run.reply
    assert "StdinNotImplementedError" in run.run.text()
    assert "getpass was called" in run.run.text()


def test_stop_at_the_prompt_ends_the_cell(kernel: Kernel) -> None:
    run = run_answering(kernel, "kept = 'yes'\ninput('Wait: ')\nkept = 'no'", [STOP],
                        timeout=30)
    assert run.status == "error", run.reply
    assert run.reply["ename"] == "KeyboardInterrupt"
    assert run.run.ended - run.run.started < 10
    # The remote cell itself saw KeyboardInterrupt, as input() raises it locally.
    run = run_answering(kernel, "try:\n    input('Again: ')\n"
                                "except KeyboardInterrupt as exc:\n    print('caught', exc)\n"
                                "kept", [STOP], timeout=30)
    assert run.status == "ok", run.reply
    assert run.run.text() == "caught Interrupted by user\n"
    assert run.run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'yes'"


def test_the_idle_kernel_answers_no_input(kernel: Kernel) -> None:
    # A remote thread that asks after its cell ended gets a refusal, and no prompt shows.
    run = run_answering(kernel, "import threading, time\n"
                                "import remote_kernel.remote.interpreter as m\n"
                                "sink, late = m._local.cell.sink, []\n"
                                "def ask():\n    time.sleep(0.5)\n    try:\n"
                                "        late.append(sink.input('Late? ', False))\n"
                                "    except Exception as exc:\n        late.append(str(exc))\n"
                                "threading.Thread(target=ask).start()", [])
    assert run.status == "ok", run.reply
    time.sleep(1.5)
    run = run_answering(kernel, "late", ["typed"])
    assert run.requests == []
    assert "only a running cell may ask for input" in \
        run.run.of_type("execute_result")[0]["content"]["data"]["text/plain"]


def test_end_of_input_is_eof_error(kernel: Kernel) -> None:
    run = run_answering(kernel, "input()", ["\x04"])  # what ipykernel's Ctrl-D answer is
    assert len(run.requests) == 1
    assert run.status == "error" and run.reply["ename"] == "EOFError", run.reply
    traceback = ANSI.sub("", "\n".join(run.reply["traceback"]))
    assert "input()" in traceback

"""input() and getpass() in a %%remote cell of an ipykernel notebook (started by
jupyter_client): the notebook's prompt box, answered through the stdin channel, the typed
answer returned on the remote side, as input() in a local cell."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.ipython.kernel_client import Kernel
from tests.ipython.stdin_driver import STOP, run_answering

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]  # each starts a kernel


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    kernel = Kernel()
    for line in ("%load_ext remote_kernel", f"%remote connect {classic_server.file} --name lab"):
        run = kernel.run(line)
        assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


def test_input_and_getpass_in_a_remote_cell(kernel: Kernel, classic_server) -> None:
    run = run_answering(kernel, "%%remote\nimport getpass, os\nprint('before')\n"
                                "name = input('Name? ')\nsecret = getpass.getpass('Key: ')\n"
                                "print(name.upper(), len(secret), os.getpid())",
                        ["ada", "hunter2"])
    assert run.status == "ok", run.reply
    assert run.requests == [{"prompt": "Name? ", "password": False},
                            {"prompt": "Key: ", "password": True}]
    assert run.run.text() == f"before\nADA 7 {classic_server.pid}\n"
    assert classic_server.pid != os.getpid()
    run = run_answering(kernel, "%remote input('Expr? ')", ["42"])  # %remote EXPR too
    assert run.status == "ok", run.reply
    assert run.run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'42'"


def test_without_stdin_the_error_is_ipykernels(kernel: Kernel) -> None:
    run = run_answering(kernel, "%%remote\ninput('Name? ')", [], allow_stdin=False)
    assert run.status == "error" and run.requests == []
    assert run.reply["ename"] == "StdinNotImplementedError"
    assert run.reply["evalue"] == ("raw_input was called, but this frontend does not support "
                                   "input requests.")


def test_stop_at_the_prompt_ends_the_remote_cell(kernel: Kernel) -> None:
    run = run_answering(kernel, "%%remote\nkept = 'yes'\ninput('Wait: ')\nkept = 'no'", [STOP],
                        timeout=30)
    assert run.status == "error", run.reply
    assert run.reply["ename"] == "KeyboardInterrupt"
    run = run_answering(kernel, "%remote kept", [])
    assert run.run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "'yes'"


def test_a_stale_sink_asks_nothing(kernel: Kernel) -> None:
    # The remote keeps the cell's sink and asks after the cell ended: refused, no prompt.
    run = run_answering(kernel, "%%remote\nimport remote_kernel.remote.interpreter as m\n"
                                "sink = m._local.cell.sink", [])
    assert run.status == "ok", run.reply
    run = run_answering(kernel, "%%remote\ntry:\n    sink.input('Stale? ', False)\n"
                                "except Exception as exc:\n    print(type(exc).__name__, exc)",
                        ["no"])
    assert run.requests == []
    assert "StdinNotImplementedError" in run.run.text()
    assert "only a running remote cell may ask for input" in run.run.text()


def test_a_cell_on_several_peers_takes_no_input(kernel: Kernel, classic_server) -> None:
    run = run_answering(kernel, f"%remote connect {classic_server.file} --name lab2", [])
    assert run.status == "ok", run.reply
    run = run_answering(kernel, "%%remote lab lab2\ninput('Which? ')", ["x", "y"])
    assert run.status == "error" and run.requests == []
    text = "\n".join("\n".join(m["content"]["traceback"]) for m in run.run.of_type("error"))
    assert "a cell that runs on several peers takes no input" in text

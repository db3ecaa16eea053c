"""Remote errors as a notebook frontend sees them: a real ipykernel (with the extension) and
the proxy kernel, started by jupyter_client, against real servers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from remote_kernel.kernel import kernelspec
from tests.ipython.kernel_client import CellRun, Kernel

pytestmark = pytest.mark.timeout(240)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PACKAGE_FILES = re.compile(r"remote_kernel[/\\]|magics\.py|connection\.py|netref\.py")
CHAINED = ("def lookup(key):\n    try:\n        return {}[key]\n    except KeyError as exc:\n"
           "        raise RuntimeError('lookup failed') from exc\n")


def error_text(run: CellRun) -> tuple[dict[str, Any], str]:
    errors = run.of_type("error")
    assert len(errors) == 1, [m["msg_type"] for _, m in run.outputs]
    content = errors[0]["content"]
    return content, ANSI.sub("", "\n".join(content["traceback"]))


def assert_chain_in(text: str) -> None:
    assert text.index("KeyError") < text.index(
        "The above exception was the direct cause of the following exception:") \
        < text.index("RuntimeError: lookup failed")
    assert "return {}[key]" in text and "raise RuntimeError('lookup failed') from exc" in text
    assert not PACKAGE_FILES.search(text), text


def answered_quickly(kernel: Kernel, request: Any) -> dict[str, Any]:
    started = time.monotonic()
    msg_id = request()
    while True:
        reply = kernel.client.get_shell_msg(timeout=2.0)
        if reply["parent_header"].get("msg_id") == msg_id:
            assert time.monotonic() - started < 2.0
            return reply["content"]


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    kernel = Kernel()
    assert kernel.run("%load_ext remote_kernel").status == "ok"
    yield kernel
    kernel.close()


@pytest.fixture(scope="module")
def lab(kernel: Kernel, classic_server) -> str:
    run = kernel.run(f"%remote connect {classic_server.file} --name lab")
    assert run.status == "ok", run.reply
    return "lab"


def test_a_chained_remote_error_is_one_error_with_both_sections(kernel, lab) -> None:
    kernel.run(f"%%remote\n{CHAINED}")
    run = kernel.run("%remote lookup('x')")
    content, text = error_text(run)
    assert (content["ename"], content["evalue"]) == ("RuntimeError", "lookup failed")
    assert run.reply["content"]["ename"] == "RuntimeError"
    assert_chain_in(text)
    assert "run_line_magic" not in text  # the magic's call is not the user's frame


def test_stop_is_at_most_three_lines(kernel, lab) -> None:
    run = kernel.run("%remote time.sleep(60)", interrupt_after=1.0, timeout=30)
    content, text = error_text(run)
    assert content["ename"] == "KeyboardInterrupt"
    assert len(text.splitlines()) <= 3, text
    assert "the connection stays usable" in text and not PACKAGE_FILES.search(text)
    assert kernel.run("%remote 6 * 7").status == "ok"


@pytest.mark.parametrize("target", ["dmeo", "localhost:abc", "127.0.0.1:99999"])
def test_a_mistake_is_one_line_in_the_notebook(kernel, target: str) -> None:
    run = kernel.run(f"%remote connect {target}")
    assert run.status == "error" and not run.of_type("error")
    text = "".join(text for _, text in run.streams("stderr"))
    assert text.startswith("UsageError: ") and text.count("\n") == 1, text
    assert "Traceback" not in text and not PACKAGE_FILES.search(text)


@pytest.mark.serial
def test_inspect_and_complete_after_the_server_died_answer_at_once(kernel,
                                                                   start_server) -> None:
    server = start_server("--classic")
    assert kernel.run(f"%remote connect {server.file} --name doomed").status == "ok"
    assert kernel.run("items = doomed.eval('[1, 2, 3]')").status == "ok"
    server.process.kill()
    server.process.wait(10)
    reply = answered_quickly(kernel, lambda: kernel.client.inspect("items", 5))
    assert reply["status"] == "ok" and reply["found"] is False
    reply = answered_quickly(kernel, lambda: kernel.client.complete("items.ap", 8))
    assert reply["status"] == "ok" and reply["matches"] == []
    reply = answered_quickly(kernel, lambda: kernel.client.complete("%%remote doomed\nx.", 18))
    assert reply["status"] == "ok"


# -- the proxy kernel ---------------------------------------------------------------------


@pytest.fixture
def proxy(start_server) -> Iterator[tuple[Kernel, Any]]:
    server = start_server("--classic", name="proxied")
    kernelspec.install("rk-test-errors", str(server.file), user=True)
    kernel = Kernel("rk-test-errors")
    try:
        yield kernel, server
    finally:
        kernel.close()
        kernelspec.remove("rk-test-errors")


def test_the_proxy_kernel_sends_the_chain_and_a_short_stop(proxy) -> None:
    kernel, _ = proxy
    kernel.run(CHAINED)
    run = kernel.run("lookup('x')")
    content, text = error_text(run)
    assert (content["ename"], content["evalue"]) == ("RuntimeError", "lookup failed")
    assert_chain_in(text)
    run = kernel.run("import time\ntime.sleep(60)", interrupt_after=1.0, timeout=30)
    content, text = error_text(run)
    assert content["ename"] == "KeyboardInterrupt" and len(text.splitlines()) <= 3, text
    run = kernel.run("x = (1 +")
    content, text = error_text(run)
    assert content["ename"] == "SyntaxError" and "^" in text and "x = (1 +" in text
    assert not PACKAGE_FILES.search(text), text


@pytest.mark.serial
def test_the_proxy_kernel_answers_at_once_after_the_server_died(proxy) -> None:
    kernel, server = proxy
    assert kernel.run("items = [1, 2, 3]").status == "ok"
    server.process.kill()
    server.process.wait(10)
    reply = answered_quickly(kernel, lambda: kernel.client.inspect("items", 5))
    assert reply["found"] is False
    reply = answered_quickly(kernel, lambda: kernel.client.complete("items.ap", 8))
    assert reply["matches"] == []

"""A Stop that lands while the notebook serves a callback from the device, nested in a call
to the device, ends that call as any Stop does: one short KeyboardInterrupt line, and the
connection stays usable. A real ipykernel (jupyter_client) against a real server process."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.ipython.kernel_client import Kernel

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]  # a bound on how soon Stop ends
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MACHINERY = re.compile(r"remote_kernel[/\\]|threading\.py|\bin wait\b")


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    kernel = Kernel()
    for code in ("%load_ext remote_kernel",
                 f"%remote connect {classic_server.file} --name dev",
                 "import time\n"
                 "def sleeps_here():\n    time.sleep(30)\n"
                 "def sleeps_there():\n    dev.modules.time.sleep(30)\n",
                 "relay = dev.eval('lambda f: f()')"):
        run = kernel.run(code)
        assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


@pytest.mark.parametrize("callback", ["sleeps_here", "sleeps_there"])
def test_a_stop_in_a_callback_is_one_short_line(kernel: Kernel, callback: str) -> None:
    run = kernel.run(f"relay({callback})", interrupt_after=1.5, timeout=30)
    assert run.status == "error"
    (error,) = run.of_type("error")
    content = error["content"]
    text = ANSI.sub("", "\n".join(content["traceback"]))
    assert content["ename"] == "KeyboardInterrupt"
    assert len(text.splitlines()) <= 3, text
    assert "the connection stays usable" in text and not MACHINERY.search(text), text
    assert run.ended - run.started < 1.5 + 3.0, run.ended - run.started
    run = kernel.run("print(dev.eval('6 * 7'), relay(lambda: 'back'))")
    assert run.status == "ok", run.reply
    assert run.text().split() == ["42", "back"]

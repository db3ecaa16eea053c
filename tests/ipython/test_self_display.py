"""A remote object that displays itself (``_ipython_display_``) shows in the notebook what it
would show locally: its method runs on the peer with display capture, and its outputs come
back in order, in the one display request, each through the output filter. Real server
processes; a real IPython shell, and a real ipykernel (jupyter_client) for what the notebook
receives on iopub."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import remote_kernel as rk
from tests.ipython.kernel_client import Kernel

pytestmark = pytest.mark.timeout(180)

SELF_SHOWING = '''
class Report:
    def _ipython_display_(self):
        print("header line")
        display({"text/html": "<b>first</b><script>alert(1)</script>",
                 "text/plain": "first"}, raw=True)
        display({"text/plain": "second"}, raw=True)

    def __repr__(self):
        return "Report()"


class Broken:
    def _ipython_display_(self):
        display({"text/plain": "partial"}, raw=True)
        raise ValueError("no display today")

    def __repr__(self):
        return "Broken()"


class Rich:
    def _ipython_display_(self):
        from IPython.display import HTML, display
        display(HTML("<i>rich</i>"))

    def __repr__(self):
        return "Rich()"
'''


def _connect(shell: InteractiveShell, server, name: str) -> rk.Connection:
    shell.run_line_magic("remote", f"connect 127.0.0.1:{server.port} --name {name} "
                                   f"--token-file {server.token_file}")
    conn = shell.user_ns[name]
    conn.execute(SELF_SHOWING)
    return conn


@pytest.fixture
def lab(shell: InteractiveShell, classic_server) -> Iterator[rk.Connection]:
    yield _connect(shell, classic_server, "selfshow")
    shell.run_line_magic("remote", "close selfshow")


def _shown(shell: InteractiveShell, obj: object) -> tuple[tuple, object, object]:
    """What displaying ``obj`` in the shell publishes: (formatter's bundle, captured)."""
    with capture_output() as captured:
        bundle = shell.display_formatter.format(obj)
    return bundle, captured.outputs, captured


def test_the_objects_own_outputs_in_order_in_one_request(shell, lab) -> None:
    report = lab.eval("Report()")
    before = lab.stats["requests"]
    bundle, outputs, captured = _shown(shell, report)
    assert lab.stats["requests"] - before == 1
    assert bundle == ({}, {})  # as for a local object that displays itself: nothing more
    assert captured.stdout == "header line\n"
    assert [o.data["text/plain"] for o in outputs] == ["first", "second"]
    html = outputs[0].data["text/html"]  # an untrusted peer: through the output filter
    assert "<b>first</b>" in html and "<script" not in html


def test_ipython_display_classes_on_the_peer(shell, lab) -> None:
    bundle, outputs, _ = _shown(shell, lab.eval("Rich()"))
    assert bundle == ({}, {})
    assert [o.data["text/html"] for o in outputs] == ["<i>rich</i>"]


def test_a_failing_display_method_falls_back_to_the_repr(shell, lab) -> None:
    bundle, outputs, captured = _shown(shell, lab.eval("Broken()"))
    assert [o.data["text/plain"] for o in outputs] == ["partial"]
    assert "ValueError: no display today" in captured.stderr
    assert "selfdisplay" not in captured.stderr  # the served side's own frame is left out
    assert bundle[0] == {"text/plain": "Broken()"}


def test_a_device_without_ipython(shell, start_server) -> None:
    server = start_server("--classic", block=("IPython",))
    conn = _connect(shell, server, "bare")
    try:
        assert conn.eval("__import__('sys').modules.get('IPython')") is None  # blocked
        bundle, outputs, captured = _shown(shell, conn.eval("Report()"))
        assert bundle == ({}, {})
        assert captured.stdout == "header line\n"
        assert [o.data["text/plain"] for o in outputs] == ["first", "second"]
        # A method that needs IPython fails into its repr, saying why.
        bundle, outputs, captured = _shown(shell, conn.eval("Rich()"))
        assert bundle[0] == {"text/plain": "Rich()"} and outputs == []
        assert "IPython" in captured.stderr
    finally:
        shell.run_line_magic("remote", "close bare")


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    kernel = Kernel()
    for code in ("%load_ext remote_kernel",
                 f"%remote connect {classic_server.file} --name dev",
                 f"%remote connect {classic_server.file} --name mine --trust",
                 f"dev.execute({SELF_SHOWING!r})", f"mine.execute({SELF_SHOWING!r})"):
        run = kernel.run(code)
        assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


def test_the_notebook_receives_the_objects_outputs(kernel: Kernel) -> None:
    run = kernel.run("dev.eval('Report()')")
    assert run.status == "ok", run.reply
    kinds = [m["msg_type"] for _, m in run.outputs]
    assert kinds == ["stream", "display_data", "display_data"], kinds
    first, second = run.of_type("display_data")
    assert first["content"]["data"]["text/plain"] == "first"
    assert "<script" not in json.dumps(first["content"])
    assert second["content"]["data"] == {"text/plain": "second"}
    run = kernel.run("mine.eval('Report()')")  # trusted: as the object made it
    (first, _) = run.of_type("display_data")
    assert "<script>" in first["content"]["data"]["text/html"]

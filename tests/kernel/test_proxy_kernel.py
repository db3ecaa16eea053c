"""The proxy kernel: installed with `remote-kernel kernel install`, driven by
jupyter_kernel_test and jupyter_client against a real `remote-kernel serve` process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import unittest
from collections.abc import Iterator
from typing import Any

import jupyter_kernel_test
import pytest

from remote_kernel.kernel import kernelspec
from tests.ipython.kernel_client import Kernel

pytestmark = pytest.mark.timeout(300)
SPEC = "rk-test-proxy"


@pytest.fixture(scope="module", autouse=True)
def installed_spec(classic_server) -> Iterator[str]:
    result = subprocess.run(
        [sys.executable, "-m", "remote_kernel", "kernel", "install", "--name", SPEC,
         "--target", str(classic_server.file), "--user", "--display-name", "Python (test)",
         "--trust"],  # our own test server: its widgets are forwarded
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listing = subprocess.run([sys.executable, "-m", "remote_kernel", "kernel", "list"],
                             capture_output=True, text=True, timeout=60).stdout
    assert SPEC in listing and str(classic_server.file) in listing
    yield SPEC
    kernelspec.remove(SPEC)


class TestProxyKernel(jupyter_kernel_test.KernelTests):
    kernel_name = SPEC
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}},
                          {"text": "pri", "matches": {"print"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('remote failure')"
    code_execute_result = [{"code": "1+2+3", "result": "6"}, {"code": "[n*n for n in range(3)]",
                                                            "result": "[0, 1, 4]"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


def test_cells_run_remotely_and_keep_state(classic_server) -> None:
    kernel = Kernel(SPEC)
    try:
        run = kernel.run("import os\nx = 41\nos.getpid()")
        assert run.status == "ok", run.reply
        remote_pid = int(run.of_type("execute_result")[0]["content"]["data"]["text/plain"])
        assert remote_pid == classic_server.pid != os.getpid()
        run = kernel.run("x + 1")
        assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
        count = run.reply["content"]["execution_count"]
        # The history names of IPython: In, Out, _N, _iN, _i (the cell before this one).
        run = kernel.run(f"(Out[{count}], _{count}, In[{count}], _i{count}, _i)")
        assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == \
            "(42, 42, 'x + 1', 'x + 1', 'x + 1')"
        info = kernel.client.kernel_info(reply=True, timeout=30)["content"]
        assert info["language_info"]["name"] == "python"
        assert info["implementation"] == "remote_kernel"
    finally:
        kernel.close()


def test_errors_carry_the_remote_type_and_frames() -> None:
    kernel = Kernel(SPEC)
    try:
        run = kernel.run("def boom():\n    return {}['missing']\nboom()")
        assert run.status == "error"
        content = run.reply["content"]
        assert content["ename"] == "KeyError"
        # IPython's colors (syntax highlighting included) apply: read the text without them.
        traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
        assert "boom" in traceback
        assert "return {}['missing']" in traceback
        assert len(run.of_type("error")) == 1
    finally:
        kernel.close()


def test_xmode_of_the_remote_shell_applies_to_its_errors() -> None:
    kernel = Kernel(SPEC)
    try:
        cell = "def divide(a, b):\n    c = a + 1\n    return c / b\ndivide(3, 0)"
        plain = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
            kernel.run(cell).reply["content"]["traceback"]))
        assert "return c / b" in plain and "c = 4" not in plain
        assert kernel.run("%xmode Verbose").status == "ok"
        verbose = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
            kernel.run(cell).reply["content"]["traceback"]))
        lines = [line.strip() for line in verbose.splitlines()]
        at = lines.index("----> 3     return c / b")
        assert lines[at + 1:at + 3] == ["c = 4", "b = 0"], verbose
        assert not any(line.startswith("divide = ") for line in lines)  # as IPython: no functions
        assert kernel.run("%xmode Minimal").status == "ok"
        minimal = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
            kernel.run(cell).reply["content"]["traceback"]))
        assert minimal.strip() == "ZeroDivisionError: division by zero", minimal
        # A cell that changes the mode and then fails shows its error in the new mode.
        context = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(
            kernel.run("%xmode Context\n" + cell).reply["content"]["traceback"]))
        assert "----> 4     return c / b" in context and "c = 4" not in context, context
    finally:
        kernel.close()


@pytest.mark.slow
def test_interrupt_and_restart(classic_server) -> None:
    kernel = Kernel(SPEC)
    try:
        kernel.run("import time\nstate = 'kept'\n%time 1")
        run = kernel.run("time.sleep(60)", interrupt_after=1.0, timeout=30)
        assert run.status == "error" and run.reply["content"]["ename"] == "KeyboardInterrupt"
        assert run.ended - run.started < 1.0 + 2.0
        assert kernel.run("state").of_type("execute_result")[0]["content"]["data"][
            "text/plain"] == "'kept'"
        kernel.manager.restart_kernel(now=True)
        kernel.client.wait_for_ready(timeout=60)
        run = kernel.run("'state' in globals()")
        assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "False"
        run = kernel.run("%time 6 * 7")  # IPython syntax works again after the restart
        assert run.status == "ok", run.reply
    finally:
        kernel.close()


def test_unreachable_target_recovers_once_the_server_is_up(tmp_path, start_server) -> None:
    missing = tmp_path / "later.json"
    kernelspec.install("rk-test-later", str(missing), user=True)
    kernel = Kernel("rk-test-later")
    try:
        run = kernel.run("1 + 1")
        assert run.status == "error"
        assert str(missing) in run.reply["content"]["evalue"]
        server = start_server("--classic", name="later")
        server.file.replace(missing)
        run = kernel.run("1 + 1")
        assert run.status == "ok", run.reply
    finally:
        kernel.close()
        kernelspec.remove("rk-test-later")


def test_widgets_forward_comms_both_ways() -> None:
    kernel = Kernel(SPEC)
    try:
        run = kernel.run("import ipywidgets\nslider = ipywidgets.IntSlider(value=3)\nslider")
        assert run.status == "ok", run.reply
        opens = [m for m in run.of_type("comm_open")
                 if m["content"]["data"].get("state", {}).get("_model_name") == "IntSliderModel"]
        assert opens, [m["msg_type"] for _, m in run.outputs]
        comm_id = opens[0]["content"]["comm_id"]
        assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"]
                   for m in run.of_type("execute_result"))
        message = kernel.client.session.msg("comm_msg", {
            "comm_id": comm_id, "data": {"method": "update", "state": {"value": 7},
                                         "buffer_paths": []}})
        kernel.client.shell_channel.send(message)
        deadline = time.monotonic() + 10
        value = None
        while time.monotonic() < deadline:
            value = kernel.run("slider.value").of_type("execute_result")[0]["content"][
                "data"]["text/plain"]
            if value == "7":
                break
            time.sleep(0.2)
        assert value == "7"
    finally:
        kernel.close()


if __name__ == "__main__":
    unittest.main()


@pytest.mark.slow
def test_nbclient_runs_a_notebook_on_the_remote(classic_server) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    notebook = new_notebook(cells=[
        new_code_cell("import os\nos.getpid()"),
        new_code_cell("class Report:\n    def _repr_html_(self):\n"
                      "        return '<h3>remote report</h3>'\nReport()"),
    ])
    notebook.metadata["kernelspec"] = {"name": SPEC, "display_name": "test", "language": "python"}
    NotebookClient(notebook, timeout=60, kernel_name=SPEC).execute()
    pid = int(notebook.cells[0].outputs[0]["data"]["text/plain"])
    assert pid == classic_server.pid and pid != os.getpid()
    assert "<h3>remote report</h3>" in notebook.cells[1].outputs[0]["data"]["text/html"]
    nbformat.validate(notebook)


def test_an_untrusted_remote_gets_no_script_and_no_widgets(classic_server) -> None:
    """Installed without --trust: display output is sanitized, widgets are withheld."""
    kernelspec.install("rk-test-untrusted", str(classic_server.file), user=True)
    kernel = Kernel("rk-test-untrusted")
    try:
        run = kernel.run("from IPython.display import HTML, Javascript, display\n"
                         "display(HTML('<b>bold</b><script>alert(1)</script>'))\n"
                         "display(Javascript('alert(2)'))\n"
                         "HTML('<i onmouseover=\"alert(3)\">x</i>')")
        assert run.status == "ok", run.reply
        rich = [m["content"]["data"] for m in run.of_type("display_data")
                + run.of_type("execute_result")]
        text = repr(rich)
        assert "<b>bold</b>" in text
        assert "<script" not in text and "alert" not in text and "javascript" not in text
        run = kernel.run("import ipywidgets\nipywidgets.IntSlider(value=3)")
        assert run.status == "ok", run.reply
        assert run.of_type("comm_open") == []
        assert "--trust" in run.text("stderr")
        # JupyterLab shows a page payload as the cell's output: the pager is filtered too.
        run = kernel.run("from IPython.core import page\n"
                         "page.page({'text/plain': 'paged', 'application/javascript': 'alert(4)',"
                         " 'text/html': '<b>paged</b><img src=x onerror=\"alert(5)\">'})")
        assert run.status == "ok", run.reply
        (page,) = run.reply["content"]["payload"]
        assert page["data"]["text/html"] == "<b>paged</b><img>"
        assert set(page["data"]) == {"text/plain", "text/html"}
    finally:
        kernel.close()
        kernelspec.remove("rk-test-untrusted")


def test_ipython_syntax_runs_remotely(classic_server) -> None:
    kernel = Kernel(SPEC)
    try:
        run = kernel.run("import os\nremote_pid = os.getpid()\n%time 6 * 7")
        assert run.status == "ok", run.reply
        assert "Wall time" in run.text()
        assert run.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "42"
        run = kernel.run("%timeit -n1 -r1 sum(range(10))")
        assert run.status == "ok", run.reply
        assert "per loop" in run.text()
        run = kernel.run("!echo hi from $remote_pid")
        assert run.status == "ok", run.reply
        assert f"hi from {classic_server.pid}" in run.text()
        run = kernel.run("%who")
        assert "os" in run.text().split() and "remote_pid" in run.text().split()
        run = kernel.run("%matplotlib inline\nimport matplotlib.pyplot as plt")
        assert run.status == "ok", run.reply
        run = kernel.run("plt.plot([1, 3, 2]);")
        assert run.status == "ok", run.reply
        images = [m for m in run.of_type("display_data") if "image/png" in m["content"]["data"]]
        assert len(images) == 1
        run = kernel.run("x = 1\nzip?")
        assert run.reply["content"]["payload"][0]["source"] == "page"
        assert "zip" in run.reply["content"]["payload"][0]["data"]["text/plain"]
        for code in ("%time 1", "!ls", "zip?", "x = !ls"):
            assert _is_complete(kernel, code)["status"] == "complete", code
        assert _is_complete(kernel, "for i in range(3):")["status"] == "incomplete"
        # Completion as IPython's own completer gives it, from the remote namespace.
        assert kernel.run("readings = {'alpha': 1, 'beta': 2}").status == "ok"
        keys = _complete(kernel, "readings['")
        assert {"alpha", "beta"} <= {m.strip("'\"") for m in keys["matches"]}, keys
        assert "%timeit" in _complete(kernel, "%tim")["matches"]
        assert "os" in _complete(kernel, "import o")["matches"]
    finally:
        kernel.close()


def _complete(kernel: Kernel, code: str) -> dict:
    msg_id = kernel.client.complete(code, len(code))
    while True:
        reply = kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def _is_complete(kernel: Kernel, code: str) -> dict:
    msg_id = kernel.client.is_complete(code)
    while True:
        reply = kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


class _Sink:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.results: list[str] = []

    def stream(self, name: str, text: str) -> None:
        self.text.append(text)

    def result(self, data: Any, metadata: Any, count: int) -> None:
        self.results.append(dict(getattr(data, "value", data))["text/plain"])


def test_reset_gives_ipython_syntax_a_fresh_shell(classic_server) -> None:
    import remote_kernel as rk

    conn = classic_server.connect(service=rk.ClassicService)  # the sink's methods are public
    try:
        interpreter = conn.root.interpreter
        sink = _Sink()
        interpreter.run_cell("x = 20\n%time x + 1", sink)
        interpreter.reset()
        assert conn.eval("'x' not in globals() and 'get_ipython' not in globals()")
        interpreter.run_cell("%time 6 * 7", sink)
        assert sink.results == ["21", "42"]
    finally:
        conn.close()


def test_ipython_syntax_without_ipython_remotely_says_what_to_install(start_server) -> None:
    server = start_server("--classic", name="plain", block=("IPython",))
    conn = server.connect(service=__import__("remote_kernel").ClassicService)
    try:
        interpreter = conn.root.interpreter
        assert conn.eval("__import__('sys').modules.get('IPython', 0) is None")  # blocked
        with pytest.raises(SyntaxError, match="pip install ipython"):
            interpreter.run_cell("x = 1\n%time x", _Sink())
        assert dict(interpreter.is_complete("%time 1"))["status"] == "invalid"
        assert dict(interpreter.is_complete("x = 1"))["status"] == "complete"
        sink = _Sink()
        interpreter.run_cell("print('plain python still runs')", sink)
        assert sink.text == ["plain python still runs\n"]
    finally:
        conn.close()


def _shell_reply(kernel: Kernel, msg_id: str) -> dict:
    while True:
        reply = kernel.client.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


HOSTILE_REPLIES = (
    "import remote_kernel.remote.interpreter as m\n"
    "from remote_kernel.protocol.boxing import ByValue\n"
    "m.Interpreter.exposed_complete = lambda self, code, pos=None: ByValue({\n"
    "    'matches': ['zip', 7, 'x' * 5000, 'a\\u202eb', 'c\\x1b]52;c;eA==\\x07'] + ['m'] * 100000,\n"
    "    'cursor_start': 0, 'cursor_end': 2, 'status': 'error', 'extra': 'x' * 1000,\n"
    "    'metadata': {'_jupyter_types_experimental': [{'text': 'evil', 'type': 'x'}]}})\n"
    "m.Interpreter.exposed_is_complete = lambda self, code: ByValue(\n"
    "    {'status': 'incomplete', 'indent': '\\n' * 100000, 'extra': 1})\n"
)


def test_a_remote_cannot_shape_the_completion_reply(start_server) -> None:
    """The proxy kernel keeps the keys a frontend reads, checks their types and bounds them."""
    server = start_server("--classic", name="hostile-complete")
    kernelspec.install("rk-test-hostile-complete", str(server.file), user=True)
    kernel = Kernel("rk-test-hostile-complete")
    try:
        run = kernel.run(HOSTILE_REPLIES)  # the server's own replies, as a hostile one would
        assert run.status == "ok", run.reply
        content = _shell_reply(kernel, kernel.client.complete("zi", 2))
        assert set(content) == {"status", "matches", "cursor_start", "cursor_end", "metadata"}
        assert content["status"] == "ok" and content["metadata"] == {}
        assert (content["cursor_start"], content["cursor_end"]) == (0, 2)
        assert content["matches"][0] == "zip" and len(content["matches"]) <= 2000
        assert set(content["matches"][1:]) == {"m"}  # no control characters, no 5000-long name
        # Offsets outside the code: no completion rather than a wrong edit.
        content = _shell_reply(kernel, kernel.client.complete("z", 1))
        assert (content["matches"], content["cursor_start"], content["cursor_end"]) == ([], 1, 1)
        assert _is_complete(kernel, "for i in x:") == {"status": "incomplete"}
    finally:
        kernel.close()
        kernelspec.remove("rk-test-hostile-complete")


def test_display_ids_update_in_place_and_inspection_types_read_as_locally() -> None:
    """display(x, display_id=True) returns a handle whose update() sends update_display_data
    with that id; update_display too; an id that is not a plain short string is not used.
    ``f?`` says ``Type: function``, as local IPython does."""
    kernel = Kernel(SPEC)
    try:
        run = kernel.run("h = display('one', display_id=True)\nprint(type(h).__name__)\n"
                         "h.update('two')\n"
                         "from IPython.display import update_display\n"
                         "display('x', display_id='abc')\nupdate_display('y', display_id='abc')\n"
                         "display('z', display_id='no <way>')\n"
                         "update_display('dropped', display_id='no <way>')")
        assert run.status == "ok", run.reply
        assert run.text() == "DisplayHandle\n"
        displays = [(m["content"]["data"]["text/plain"], m["content"]["transient"])
                    for m in run.of_type("display_data")]
        updates = [(m["content"]["data"]["text/plain"], m["content"]["transient"])
                   for m in run.of_type("update_display_data")]
        handle_id = displays[0][1]["display_id"]
        assert re.fullmatch(r"[0-9a-f]{32}", handle_id)
        assert displays == [("'one'", {"display_id": handle_id}),
                            ("'x'", {"display_id": "abc"}), ("'z'", {})]
        assert updates == [("'two'", {"display_id": handle_id}), ("'y'", {"display_id": "abc"})]
        kernel.run("def reading():\n    '''One value.'''\n    return 1")
        reply = kernel.client.inspect("reading", 7, 0, reply=True, timeout=30)["content"]
        assert reply["found"]
        text = re.sub(r"\x1b\[[0-9;]*m", "", reply["data"]["text/plain"])
        assert re.search(r"^Type:\s+function$", text, re.M), text
    finally:
        kernel.close()

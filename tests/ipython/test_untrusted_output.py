"""A peer's output is untrusted: scripts never reach the notebook unless the user trusts that
connection. A real ipykernel (jupyter_client) against a real server whose objects carry
hostile display methods; what is checked is what the kernel publishes on iopub."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.ipython.kernel_client import Kernel

pytestmark = pytest.mark.timeout(180)

HOSTILE = '''
class Evil:
    def _repr_html_(self):
        return ('<table><tr><td>42</td></tr></table><script>alert(1)</script>'
                '<img src=x onerror="fetch(1)">')
    def _repr_javascript_(self):
        return 'fetch("/api/contents/pwned.txt", {method: "PUT"})'
    def __repr__(self):
        return 'Evil()'
'''
SCRIPT_MARKS = ("<script", "onerror", "fetch(", "application/javascript")


def _published(run) -> str:
    """Everything the frontend renders as rich output (stream text is shown as text)."""
    return json.dumps([m["content"] for _, m in run.outputs
                       if m["msg_type"] in ("display_data", "execute_result", "update_display_data")])


@pytest.fixture(scope="module")
def kernel(classic_server) -> Iterator[Kernel]:
    kernel = Kernel()
    for code in ("%load_ext remote_kernel",
                 f"%remote connect {classic_server.file} --name evil",
                 f"%remote connect {classic_server.file} --name mine --trust",
                 f"evil.execute({HOSTILE!r})", f"mine.execute({HOSTILE!r})"):
        run = kernel.run(code)
        assert run.status == "ok", run.reply
    yield kernel
    kernel.close()


def test_a_netref_display_carries_no_script(kernel: Kernel) -> None:
    run = kernel.run("evil.eval('Evil()')")
    assert run.status == "ok", run.reply
    (result,) = run.of_type("execute_result")
    data = result["content"]["data"]
    assert "application/javascript" not in data
    assert "<td>42</td>" in data["text/html"]  # the table itself survives
    assert not any(mark in _published(run) for mark in SCRIPT_MARKS), _published(run)
    # The user is told what was withheld and how to allow it.
    assert "withheld application/javascript" in run.text("stderr")
    assert "--trust" in run.text("stderr")


def test_a_remote_cell_display_carries_no_script(kernel: Kernel) -> None:
    run = kernel.run("%%remote evil\ndisplay(Evil())\nEvil()")
    assert run.status == "ok", run.reply
    assert run.of_type("display_data") and run.of_type("execute_result")
    assert not any(mark in _published(run) for mark in SCRIPT_MARKS), _published(run)


PAGER_CELL = ("from IPython.core import page\n"
              "page.page({'text/plain': 'paged text',\n"
              "           'text/html': '<b>paged</b><img src=x onerror=\"fetch(1)\">'\n"
              "                        '<script>fetch(2)</script>',\n"
              "           'application/javascript': 'fetch(\"/api/contents/pwned.txt\")'})")


def _pages(run) -> list[dict]:
    return [p for p in run.reply["content"].get("payload", []) if p.get("source") == "page"]


def test_a_remote_page_carries_no_script(kernel: Kernel) -> None:
    """JupyterLab shows a page payload as the cell's output: the pager is filtered too."""
    run = kernel.run(f"%%remote evil\n{PAGER_CELL}")
    assert run.status == "ok", run.reply
    (page,) = _pages(run)
    assert "<b>paged</b>" in page["data"]["text/html"]
    assert page["data"]["text/plain"] == "paged text"
    assert not any(mark in json.dumps(page) for mark in SCRIPT_MARKS), page
    run = kernel.run("%%remote mine\n" + PAGER_CELL)  # trusted: as it was sent
    (page,) = _pages(run)
    assert "application/javascript" in page["data"] and "onerror" in page["data"]["text/html"]


def test_remote_pinfo_in_a_cell_is_filtered(kernel: Kernel) -> None:
    run = kernel.run("%%remote evil\n"
                     "def f():\n    '<img src=x onerror=\"fetch(1)\"> \x1b]52;c;eA==\x07'\n"
                     "f?")
    assert run.status == "ok", run.reply
    (page,) = _pages(run)
    text = json.dumps(page)
    assert "Docstring" in page["data"]["text/plain"]
    assert "\x1b]" not in page["data"]["text/plain"]
    assert "<img" not in page["data"].get("text/html", ""), text


def test_terminal_escapes_other_than_colours_are_removed(kernel: Kernel) -> None:
    run = kernel.run("%%remote evil\n"
                     "print('\\x1b[31mred\\x1b[0m \\x1b]52;c;cHduZWQ=\\x07 \\x1b]8;;javascript:x"
                     "\\x07link\\x1b]8;;\\x07')")
    assert run.status == "ok", run.reply
    text = run.text()
    assert "\x1b[31mred\x1b[0m" in text and "link" in text
    assert "\x1b]" not in text and "javascript" not in text


def test_a_remote_error_carries_no_terminal_escapes(kernel: Kernel) -> None:
    """A terminal IPython would act on an OSC 52 in a traceback (a clipboard write)."""
    run = kernel.run("%%remote evil\nraise ValueError('X\\x1b]52;c;eA==\\x07Y\\u202eZ')")
    assert run.status == "error"
    (error,) = run.of_type("error")
    traceback = "\n".join(error["content"]["traceback"])
    assert "XY" in traceback and "Z" in traceback
    assert "\x1b]" not in traceback and "\u202e" not in traceback
    assert "\x1b[" in traceback  # IPython's colours stay


def test_a_trusted_connection_passes_its_output_unchanged(kernel: Kernel) -> None:
    run = kernel.run("mine.eval('Evil()')")
    assert run.status == "ok", run.reply
    (result,) = run.of_type("execute_result")
    assert "application/javascript" in result["content"]["data"]
    assert "<script>" in result["content"]["data"]["text/html"]


def test_the_panel_snapshot_says_which_connections_are_trusted(kernel: Kernel) -> None:
    run = kernel.run("from remote_kernel.ipython.registry import get_registry\n"
                     "print(sorted((e.name, e.describe()['trusted']) "
                     "for e in get_registry().entries.values()))")
    assert run.text().strip() == "[('evil', False), ('mine', True)]"
